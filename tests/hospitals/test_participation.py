"""A hospital's round without Flower: refusals, the ledger across restarts, what leaves it."""

from __future__ import annotations

import numpy as np
import pytest

from crypto import SecretContext
from demo.setup import DEMO_CONSENT_WAIVER, Consortium
from hospitals.ledger import PrivacyLedger
from hospitals.node import NodeSettings
from hospitals.participation import (
    RoundRefusedError,
    RoundRequest,
    encrypt_model,
    evaluate_round,
    train_round,
)


def node_of(consortium: Consortium, index: int = 0) -> NodeSettings:
    return consortium.nodes[consortium.hospitals[index].hospital]


def waived(policy: str) -> str:
    """A policy text with the demo's consent waiver, as the demo's nodes have."""
    return policy + f'consent_waiver = "{DEMO_CONSENT_WAIVER}"\n'


def request(
    consortium: Consortium,
    round_number: int,
    *,
    run_id: str = "7",
    global_state: bytes | None = None,
) -> RoundRequest:
    return RoundRequest(
        run_id=run_id,
        round_number=round_number,
        protocol=consortium.protocol,
        global_state=global_state,
    )


def test_the_ledger_refuses_an_over_budget_round_after_a_restart(make_consortium):
    consortium = make_consortium(rounds=5)
    node = node_of(consortium)
    first = train_round(node, request(consortium, 1))
    spent = PrivacyLedger(node.ledger_path).epsilon(
        dataset_id=node.dataset_id, delta=1e-5, accountant=first.step.accountant
    )
    node.policy_path.write_text(waived(f"max_lifetime_epsilon = {spent * 1.05}\n"))
    received = request(consortium, 2, global_state=first.update)

    # A fresh ledger on the same file is what a restarted node (or the next ClientApp) sees.
    with pytest.raises(RoundRefusedError) as refusal:
        train_round(node, received)

    assert refusal.value.code == "budget-exceeded"
    assert f"cap {spent * 1.05:.2f}" in refusal.value.reason
    assert len(PrivacyLedger(node.ledger_path).entries(dataset_id=node.dataset_id)) == 1
    # Declining to train, the node still reports how the model it received does.
    assert refusal.value.evaluation == evaluate_round(node, received)


def test_a_round_evaluates_the_model_it_received_before_training_it(make_consortium):
    consortium = make_consortium(rounds=2)
    first = train_round(node_of(consortium, 0), request(consortium, 1))
    received = request(consortium, 2, global_state=first.update)

    second = train_round(node_of(consortium, 1), received)

    assert first.evaluation is None  # round 1 starts from the protocol's seed
    assert second.evaluation == evaluate_round(node_of(consortium, 1), received)
    assert second.evaluation.metrics.n > 0


def test_a_run_cannot_spend_past_the_study_target(make_consortium):
    consortium = make_consortium(rounds=1)
    node = node_of(consortium)
    train_round(node, request(consortium, 1))

    with pytest.raises(RoundRefusedError) as refusal:
        train_round(node, request(consortium, 1))  # the same round again would pass ε = 3

    assert refusal.value.code == "study-target-exceeded"


def test_invalid_local_data_is_refused_without_quoting_it(make_consortium):
    consortium = make_consortium(rounds=1)
    node = node_of(consortium)
    lines = node.data_path.read_text().splitlines()
    header, first_row = lines[0], lines[1].split(",")
    first_row[1] = "SECRET-VALUE"
    node.data_path.write_text("\n".join([header, ",".join(first_row), *lines[2:]]) + "\n")

    with pytest.raises(RoundRefusedError) as refusal:
        train_round(node, request(consortium, 1))

    assert refusal.value.code == "invalid-data"
    assert "SECRET-VALUE" not in refusal.value.reason
    assert "SECRET-VALUE" in node.log_path.read_text()


def test_a_global_state_under_another_key_is_refused(make_consortium):
    consortium = make_consortium(rounds=2)
    stranger = SecretContext.generate(params=consortium.key.params)
    forged = encrypt_model(stranger, np.zeros(31), rows=1, weight_unit=None).to_bytes()

    with pytest.raises(RoundRefusedError) as refusal:
        train_round(node_of(consortium), request(consortium, 2, global_state=forged))

    assert refusal.value.code == "invalid-global-state"
    assert "another study" in refusal.value.reason


def test_a_cohort_below_the_policy_minimum_is_refused(make_consortium):
    consortium = make_consortium(rounds=1)
    node = node_of(consortium)
    node.policy_path.write_text(waived("min_cohort_size = 100000\n"))

    with pytest.raises(
        RoundRefusedError, match="^226 usable rows is below the node policy's minimum cohort of"
    ):
        train_round(node, request(consortium, 1))
