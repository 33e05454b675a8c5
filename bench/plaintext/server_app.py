"""The aggregator's ServerApp with the model in the clear: the baseline's round loop.

`aggregator.rounds.run_study`'s rounds, messages and reports, from its own pieces (waiting for
hospitals, round content, exchanges, reports once each model is evaluated, the results sink), with
HE's two steps replaced: replies are float32 models averaged here with numpy, weighted by rows,
and the mean goes back in the clear. A baseline has no drop-outs to survive: every hospital must
contribute to every round, or the run fails.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from aggregator.config import AggregatorConfig
from aggregator.results import HospitalRound, ResultsSink
from aggregator.rounds import (
    HospitalNames,
    Reply,
    RoundReports,
    RunFailedError,
    SummedRound,
    await_hospitals,
    exchange,
    hospital_round,
    no_reply_reasons,
    number,
    refusal_reason,
    round_content,
)
from aggregator.server_app import results_sink
from bench.plaintext import wire as plain
from hospitals import wire

app = ServerApp()


@dataclass(frozen=True)
class PlaintextUpdate:
    node_id: int
    parameters: npt.NDArray[np.float32]
    rows: int
    report: HospitalRound


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = AggregatorConfig.from_run_config(context.run_config)
    sink = results_sink(config)
    try:
        run_plaintext_study(grid, config, sink)
    except Exception as error:
        sink.run_finished(status="failed", reason=str(error))
        raise
    sink.run_finished(status="completed")


def run_plaintext_study(grid: Grid, config: AggregatorConfig, sink: ResultsSink) -> None:
    names = HospitalNames()
    reports = RoundReports(sink, names)
    with reports.unevaluated_on_failure():
        for round_number in range(1, config.rounds + 1):
            started = time.monotonic()
            replies = train(grid, config, names, round_number, reports.global_state)
            reports.evaluated_by(replies, ended=started)
            updates = [plaintext_update(reply, names, round_number) for reply in replies]
            reports.summed(
                SummedRound(
                    number=round_number,
                    started=started,
                    reports={u.node_id: u.report for u in updates},
                    dropped={},
                    global_state=plain.to_bytes(weighted_mean(updates)),
                )
            )
        reports.evaluate_final(grid, config)


def train(
    grid: Grid,
    config: AggregatorConfig,
    names: HospitalNames,
    round_number: int,
    global_model: bytes | None,
) -> list[Reply]:
    """Every connected hospital's reply: its model trained from `global_model`, with its weight,
    and its evaluation of `global_model`."""
    wait_timeout = config.join_timeout_s if round_number == 1 else 0.0
    nodes = await_hospitals(grid, minimum=config.min_hospitals, timeout_s=wait_timeout)
    content = round_content(config, round_number=round_number, global_state=global_model)
    replies = exchange(grid, nodes, wire.TRAIN, content, round_number, config.round_timeout_s)
    for reply in replies:
        names.learn(reply)
    silent = no_reply_reasons(nodes, replies, names, config.round_timeout_s)
    if silent:
        reasons = "; ".join(f"{hospital}: {reason}" for hospital, reason in silent.items())
        raise RunFailedError(f"round {round_number}: {reasons}")
    return replies


def weighted_mean(updates: Sequence[PlaintextUpdate]) -> npt.NDArray[np.float64]:
    return np.average(
        np.stack([u.parameters for u in updates]), axis=0, weights=[u.rows for u in updates]
    )


def plaintext_update(reply: Reply, names: HospitalNames, round_number: int) -> PlaintextUpdate:
    hospital = names[reply.node_id]
    reason = refusal_reason(reply.message)
    if reason:
        raise RunFailedError(f"round {round_number}: {hospital} {reason}")
    blob = wire.blob_of(reply.message.content, wire.UPDATE, inline_in=wire.REPORT)
    report = reply.message.content.config_records[wire.REPORT]
    return PlaintextUpdate(
        node_id=reply.node_id,
        parameters=plain.from_bytes(blob),
        rows=int(number(report, plain.ROWS)),
        report=hospital_round(reply.message, hospital, bytes_up=len(blob)),
    )
