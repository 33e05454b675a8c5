"""Flower ClientApp wiring: turn messages into round requests and outcomes into replies.

Any failure becomes a refusal with a publishable reason; the full error stays in the node log,
because an exception's text could quote local data and Flower would forward it verbatim.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from flwr.app import (
    ConfigRecord,
    ConfigRecordValues,
    Context,
    Message,
    RecordDict,
)
from flwr.clientapp import ClientApp

from hospitals import wire
from hospitals.dp import EPSILON_CONVERSIONS
from hospitals.node import NodeSettings, node_logger
from hospitals.participation import (
    EvaluationOutcome,
    RoundRefusedError,
    RoundRequest,
    TrainOutcome,
    evaluate_round,
    train_round,
)
from hospitals.protocol import ProtocolError, StudyProtocol

app = ClientApp()


# Consent comes from the node's own config and policy: the portal's snapshot, or the policy's
# waiver. Nothing in a message can choose or replace it.
@app.train()
def train(msg: Message, context: Context) -> Message:
    return _handle(msg, context, lambda node, request: _train_reply(train_round(node, request)))


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _handle(
        msg, context, lambda node, request: _evaluate_reply(evaluate_round(node, request))
    )


def _handle(
    msg: Message,
    context: Context,
    act: Callable[[NodeSettings, RoundRequest], tuple[RecordDict, str]],
) -> Message:
    node = NodeSettings.from_node_config(context.node_config)
    if node.cpu_threads is not None:
        torch.set_num_threads(node.cpu_threads)
    identity: dict[str, ConfigRecordValues] = {"hospital": node.hospital}
    try:
        request = round_request(msg)
        # The protocol hash, accountant and ε conversion this node acted under, so nodes can be
        # compared; the consent basis once the round has one.
        accountant = request.protocol.privacy.accountant
        identity["protocol_sha256"] = request.protocol.sha256
        identity["accountant"] = str(accountant)
        identity["epsilon_conversion"] = EPSILON_CONVERSIONS[accountant]
        content, consent = act(node, request)
        identity["consent"] = consent
    except RoundRefusedError as refusal:
        node_logger(node).warning("round refused (%s): %s", refusal.code, refusal.reason)
        content = _refusal(refusal.code, refusal.reason)
        if refusal.evaluation is not None:
            content[wire.REPORT] = ConfigRecord(eval_section(refusal.evaluation))
    except Exception:
        node_logger(node).exception("round failed")
        content = _refusal(
            "internal-error", f"the node failed; see {node.log_path.name} at the node"
        )
    sections = content.config_records.get(wire.REPORT) or ConfigRecord()
    content[wire.REPORT] = ConfigRecord({**identity, **sections})
    return Message(content, reply_to=msg)


def _refusal(code: str, reason: str) -> RecordDict:
    return RecordDict({wire.REFUSAL: ConfigRecord({"code": code, "reason": reason})})


def round_request(msg: Message) -> RoundRequest:
    """Read the aggregator's request; anything malformed is refused, never trusted."""
    config = msg.content.config_records.get(wire.ROUND_CONFIG) or ConfigRecord()
    round_number = config.get("round")
    protocol_json = config.get("protocol")
    if not isinstance(round_number, int) or not isinstance(protocol_json, str):
        raise RoundRefusedError(
            "invalid-request", "the round request lacks a round number or protocol"
        )
    try:
        protocol = StudyProtocol.from_json(protocol_json)
    except ProtocolError as error:
        raise RoundRefusedError("invalid-protocol", str(error)) from error
    global_state = _global_state(msg.content)
    weight_unit = config.get("weight_unit")
    if weight_unit is not None and (type(weight_unit) is not int or weight_unit < 1):
        raise RoundRefusedError(
            "invalid-request",
            f"the round's weight unit must be a positive integer: {weight_unit!r}",
        )
    return RoundRequest(
        run_id=str(msg.metadata.run_id),
        round_number=round_number,
        protocol=protocol,
        global_state=global_state,
        final=config.get("final") is True,
        weight_unit=weight_unit,
    )


def _global_state(content: RecordDict) -> bytes | None:
    """The round's global state, inline in its config or a record of its own (hospitals.wire);
    None in round 1."""
    try:
        return wire.blob_of(content, wire.GLOBAL_STATE, inline_in=wire.ROUND_CONFIG)
    except KeyError:
        return None
    except (TypeError, ValueError) as error:
        raise RoundRefusedError("invalid-request", f"the round's global state: {error}") from None


def _train_reply(outcome: TrainOutcome) -> tuple[RecordDict, str]:
    step = outcome.step
    spent: dict[str, ConfigRecordValues] = {
        "epsilon": outcome.run_epsilon,
        "noise_multiplier": step.noise_multiplier,
        "sample_rate": step.sample_rate,
        "steps": step.steps,
        "delta": step.delta,
        "rows_rounded": outcome.rows_rounded,
        "train_seconds": outcome.train_seconds,
    }
    report: dict[str, ConfigRecordValues] = {
        wire.TRAIN_SECTION + key: value for key, value in spent.items()
    }
    if outcome.evaluation is not None:
        report |= eval_section(outcome.evaluation)
    content = RecordDict({wire.REPORT: ConfigRecord(report)})
    wire.put_blob(content, wire.UPDATE, outcome.update, inline_in=wire.REPORT)
    return content, outcome.consent


def _evaluate_reply(outcome: EvaluationOutcome) -> tuple[RecordDict, str]:
    return RecordDict({wire.REPORT: ConfigRecord(eval_section(outcome))}), outcome.consent


def eval_section(outcome: EvaluationOutcome) -> dict[str, ConfigRecordValues]:
    """The report's EVAL_SECTION: the received model's published metrics and rows, rounded."""
    published = ("loss", "accuracy", "roc_auc")  # not the exact held-out count
    values = outcome.metrics.to_dict()
    metrics: dict[str, ConfigRecordValues] = {
        key: float(value) for key in published if (value := values[key]) is not None
    }
    metrics["rows_rounded"] = outcome.rows_rounded
    return {wire.EVAL_SECTION + key: value for key, value in metrics.items()}
