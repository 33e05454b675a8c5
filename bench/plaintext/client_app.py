"""The hospitals' ClientApp with the model in the clear: the baseline's node.

Each handler is `hospitals.participation`'s round (train_round, evaluate_round) with the crypto
taken out, built from the product's own pieces: the node's checks, consented rows and split
(`prepare`), the planned σ, budget charge and DP-SGD (`train_locally`), the evaluation, and the
hospitals' ClientApp wiring (identity, refusals and reports). The wiring's helpers are private,
reused all the same: a copy would drift from the node it stands in for. The model arrives and
leaves as float32; the exact training rows travel beside it as its weight.
"""

from __future__ import annotations

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from bench.plaintext import wire as plain
from hospitals import wire
from hospitals.client_app import _evaluate_reply, _handle, _train_reply
from hospitals.models import build_model, get_flat_parameters, set_flat_parameters
from hospitals.node import NodeSettings
from hospitals.participation import (
    RoundRequest,
    evaluate_prepared,
    prepare,
    save_released_model,
    train_locally,
)

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    return _handle(msg, context, train_plaintext)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _handle(msg, context, evaluate_plaintext)


def train_plaintext(node: NodeSettings, request: RoundRequest) -> tuple[RecordDict, str]:
    prepared = prepare(node, request)
    model = global_model(request)
    evaluation = None if request.global_state is None else evaluate_prepared(model, prepared)
    trained = train_locally(node, request, prepared, model)
    update = plain.to_bytes(get_flat_parameters(model))
    content, consent = _train_reply(
        trained.outcome(update, prepared=prepared, evaluation=evaluation)
    )
    content.config_records[wire.REPORT][plain.ROWS] = len(prepared.train)
    return content, consent


def evaluate_plaintext(node: NodeSettings, request: RoundRequest) -> tuple[RecordDict, str]:
    prepared = prepare(node, request)
    model = global_model(request)
    evaluation = evaluate_prepared(model, prepared)
    if request.final:
        save_released_model(node, request, get_flat_parameters(model))
    return _evaluate_reply(evaluation)


def global_model(request: RoundRequest) -> nn.Module:
    """The protocol's model, initialised from its seed in round 1, else holding the global mean."""
    protocol = request.protocol
    model = build_model(protocol.model, n_features=protocol.schema.n_features, seed=protocol.seed)
    if request.global_state is not None:
        set_flat_parameters(model, plain.from_bytes(request.global_state))
    return model
