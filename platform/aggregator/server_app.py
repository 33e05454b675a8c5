"""Flower ServerApp wiring: read the run config, run the study, report how it ended."""

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from aggregator.config import AggregatorConfig, ConfigError
from aggregator.results import HttpResultsSink, JsonlResultsSink, ResultsSink
from aggregator.rounds import aggregator_facts, run_study

app = ServerApp()


def results_sink(config: AggregatorConfig) -> ResultsSink:
    """The portal's events API when the run config names it, else the JSON-lines file."""
    if config.reports_to_portal:
        return HttpResultsSink(config.results_url, config.results_token)
    if config.results_path is None:
        raise ConfigError("run config names neither 'results-url' nor 'results-path'")
    return JsonlResultsSink(config.results_path)


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = AggregatorConfig.from_run_config(context.run_config)
    sink = results_sink(config)
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
