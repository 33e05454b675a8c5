"""Flower ServerApp wiring: read the run config, run the study, report how it ended."""

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from aggregator.config import AggregatorConfig
from aggregator.results import JsonlResultsSink
from aggregator.rounds import aggregator_facts, run_study

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = AggregatorConfig.from_run_config(context.run_config)
    sink = JsonlResultsSink(config.results_path)
    sink.run_started(
        study_id=config.study_id,
        run_id=str(context.run_id),
        rounds=config.rounds,
        min_hospitals=config.min_hospitals,
        aggregator=aggregator_facts(config.he_context),
    )
    try:
        run_study(grid, config, sink)
    except Exception as error:
        sink.run_finished(status="failed", reason=str(error))
        raise
    sink.run_finished(status="completed")
