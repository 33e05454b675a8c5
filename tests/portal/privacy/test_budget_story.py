"""A hospital's lifetime budget across runs, with a real node (DP-SGD, HE, its own ledger) and the
real portal services: two runs spend most of the cap, a third is refused at the preflight; and when
the portal's mirror is stale the preflight passes but the node, the authority, still refuses."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from core.errors import ConflictError
from demo.setup import DEMO_CONSENT_WAIVER, Consortium, node_policy_toml
from hospitals.dp import epsilon_of, plan_round
from hospitals.node import NodeSettings
from hospitals.participation import RoundRefusedError, RoundRequest, assess, train_round
from hospitals.policy import load_policy
from hospitals.reporting import ledger_report, readiness_report
from privacy.payloads import parse_ledger_report, parse_readiness_report
from privacy.services import ledger_report_ingest, preflight_require, readiness_report_record
from runs.models import Run
from runs.services import run_start
from studies.models import Study
from tests.portal.stack import approved_study, seed_hospitals

pytestmark = pytest.mark.django_db


def run_once(node: NodeSettings, consortium: Consortium, run_id: str) -> None:
    """One whole (single-round) run at the node: it charges its ledger, trains and encrypts."""
    train_round(
        node,
        RoundRequest(
            run_id=run_id, round_number=1, protocol=consortium.protocol, global_state=None
        ),
    )


def report(node: NodeSettings, consortium: Consortium, study: Study) -> None:
    """The node's report (what `cohort-hospital heartbeat` sends), through the portal's services."""
    institution = study.enrollments.get(institution__slug=node.hospital).institution
    ledger_report_ingest(
        institution=institution,
        datasets=parse_ledger_report(ledger_report(node, load_policy(node.policy_path))),
    )
    readiness_report_record(
        study=study,
        institution=institution,
        report=parse_readiness_report(readiness_report(node, consortium.protocol)),
    )


def room_for_two_runs(consortium: Consortium, node: NodeSettings) -> float:
    """A lifetime cap between what two runs of the study spend and what three would."""
    protocol = consortium.protocol
    planned = plan_round(
        privacy=protocol.privacy,
        training=protocol.training,
        rounds=protocol.rounds,
        n_rows=assess(node, protocol).rows_train,
    )
    policy = load_policy(node.policy_path)

    def lifetime(runs: int) -> float:
        return epsilon_of([planned] * runs, delta=policy.delta, accountant=policy.accountant)

    return (lifetime(2) + lifetime(3)) / 2


def test_the_third_run_is_refused_at_preflight_and_a_stale_mirror_meets_the_node(
    make_consortium,
):
    consortium = make_consortium(rounds=1)
    nodes = consortium.nodes
    hospital_a = nodes["hospital-a"]
    cap = room_for_two_runs(consortium, hospital_a)
    hospital_a.policy_path.write_text(
        node_policy_toml(
            study_id=consortium.protocol.study_id,
            max_lifetime_epsilon=cap,
            consent_waiver=DEMO_CONSENT_WAIVER,
        )
    )
    study = approved_study(
        consortium, seed_hospitals(consortium, admin=User.objects.create_superuser("admin"))
    )
    for node in nodes.values():
        report(node, consortium, study)
    assert preflight_require(study=study).passed

    # Run 1 is reported; run 2 happens while the node does not report (the mirror goes stale).
    run_once(hospital_a, consortium, "run-1")
    report(hospital_a, consortium, study)
    run_once(hospital_a, consortium, "run-2")

    stale = preflight_require(study=study)  # the mirror knows one run: it sees room for another
    (row,) = [r for r in stale.rows if r.institution.slug == "hospital-a"]
    assert row.lifetime_projected is not None and row.lifetime_projected < cap

    # The node's own ledger knows both runs and refuses the third at its first round.
    with pytest.raises(RoundRefusedError) as refusal:
        run_once(hospital_a, consortium, "run-3")
    assert refusal.value.code == "budget-exceeded"

    # Once the node reports again, the preflight refuses the third run itself, and nothing starts.
    report(hospital_a, consortium, study)
    with pytest.raises(ConflictError) as blocked:
        run_start(study=study, actor=study.owner)
    assert "hospital-a" in str(blocked.value) and "lifetime" in str(blocked.value)
    assert not Run.objects.filter(study=study).exists()
