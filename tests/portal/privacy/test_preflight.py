import pytest

from core.errors import ConflictError
from core.models import AuditEvent
from hospitals.dp import PrivacyStep, epsilon_of, plan_round
from hospitals.ledger import PrivacyLedger
from hospitals.protocol import StudyProtocol
from privacy.models import LedgerMirror, ReadinessReport, RunPreflight
from privacy.selectors import study_preflight
from runs.models import Run
from runs.services import run_start
from studies.models import Enrollment, Study
from tests.portal.factories import (
    EnrollmentFactory,
    InstitutionFactory,
    ledger_entry,
    mirror_ledger,
)
from tests.portal.runs.conftest import ready_study

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_worker(monkeypatch):
    monkeypatch.setattr("runs.tasks.run_study_task.delay", lambda run_id: None)


def planned_step(study: Study, rows: int) -> tuple[StudyProtocol, PrivacyStep]:
    protocol = StudyProtocol.from_dict(study.protocol, require_encryption=False)
    step = plan_round(
        privacy=protocol.privacy, training=protocol.training, rounds=protocol.rounds, n_rows=rows
    )
    return protocol, step


def refused_start(study: Study) -> ConflictError:
    with pytest.raises(ConflictError) as raised:
        run_start(study=study, actor=study.owner)
    assert not Run.objects.filter(study=study).exists()
    assert not RunPreflight.objects.exists()
    assert not AuditEvent.objects.filter(action="run.start").exists()
    study.refresh_from_db()
    assert study.state == Study.State.READY
    return raised.value


def test_the_projection_is_what_the_planned_rounds_spend(tmp_path):
    study = ready_study(rounds=3)
    protocol, planned = planned_step(study, 400)
    # hospital-a's dataset already took part in another study.
    node = PrivacyLedger(tmp_path / "ledger.sqlite3")
    earlier = PrivacyStep(
        sample_rate=0.05, noise_multiplier=1.4, steps=20, delta=1e-6, accountant="prv"
    )
    for number in (1, 2):
        node.record(
            dataset_id="hospital-a-data",
            study_id="earlier",
            run_id="7",
            round_number=number,
            step=earlier,
        )
    history = node.entries(dataset_id="hospital-a-data")
    mirror_ledger(
        InstitutionFactory(slug="hospital-a"),
        dataset_id="hospital-a-data",
        cap=10.0,
        delta=1e-6,
        entries=tuple(
            ledger_entry(e.step, study_id=e.study_id, run_id=e.run_id, round_number=e.round_number)
            for e in history
        ),
    )

    preflight = study_preflight(study=study)

    assert preflight.passed, preflight.reasons
    row = next(r for r in preflight.rows if r.institution.slug == "hospital-a")
    assert row.planned == planned
    privacy = protocol.privacy
    assert row.run_epsilon == epsilon_of(
        [planned] * 3, delta=privacy.delta, accountant=privacy.accountant
    )
    assert row.run_epsilon == pytest.approx(3.0, rel=0.005)
    # The node charges the same planned step each round; what it then holds is the projection.
    for number in (1, 2, 3):
        node.charge(
            dataset_id="hospital-a-data",
            study_id=study.slug,
            run_id="4242",
            round_number=number,
            step=planned,
            cap=10.0,
            delta=1e-6,
            accountant="rdp",
            context=f"round {number}",
        )
    spent_by_run = node.epsilon(
        dataset_id="hospital-a-data",
        delta=privacy.delta,
        accountant=privacy.accountant,
        run_id="4242",
    )
    assert row.run_epsilon == pytest.approx(spent_by_run, rel=1e-12)
    lifetime = node.epsilon(dataset_id="hospital-a-data", delta=1e-6, accountant="rdp")
    assert row.lifetime_projected == pytest.approx(lifetime, rel=1e-12)
    assert row.lifetime_spent == pytest.approx(
        epsilon_of([earlier, earlier], delta=1e-6, accountant="rdp"), rel=1e-12
    )


def test_a_started_run_keeps_its_projection():
    study = ready_study()

    run = run_start(study=study, actor=study.owner)

    projection = RunPreflight.objects.get(run=run).projection
    assert projection["passed"] is True
    assert projection["protocol_sha256"] == study.protocol_sha256
    assert (projection["accountant"], projection["conversion"]) == ("rdp", "rdp-balle2020")
    hospitals = {h["institution"]: h for h in projection["hospitals"]}
    assert set(hospitals) == {"hospital-a", "hospital-b"}
    _, planned = planned_step(study, 400)
    assert hospitals["hospital-a"]["noise_multiplier"] == planned.noise_multiplier
    assert hospitals["hospital-a"]["steps_per_round"] == planned.steps
    assert hospitals["hospital-a"]["run_epsilon"] == pytest.approx(3.0, rel=0.005)
    assert hospitals["hospital-a"]["lifetime_spent"] == 0.0
    event = AuditEvent.objects.get(action="run.start", target_id=str(run.pk))
    assert event.data["preflight"] == projection


def test_a_run_that_would_pass_a_hospitals_lifetime_cap_is_refused():
    study = ready_study(privacy=False)
    _, planned = planned_step(study, 400)
    # hospital-b's dataset spent most of its cap in two earlier runs of the same design.
    earlier = tuple(
        ledger_entry(planned, study_id="earlier", run_id=run_id, round_number=number)
        for run_id in ("101", "102")
        for number in (1, 2)
    )
    for slug in ("hospital-a", "hospital-b"):
        institution = InstitutionFactory(slug=slug)
        mirror_ledger(
            institution,
            dataset_id="data",
            cap=4.2,
            entries=earlier if slug == "hospital-b" else (),
        )
        ReadinessReport.objects.create(
            study=study,
            institution=institution,
            dataset_id="data",
            protocol_sha256=study.protocol_sha256,
            rows_train=400,
            rows_holdout=100,
            report_sha256="0" * 64,
            reported_at=study.created_at,
        )
    spent = LedgerMirror.objects.get(institution__slug="hospital-b").epsilon_spent
    projected = epsilon_of(
        [*[e.step for e in earlier], planned, planned], delta=1e-5, accountant="rdp"
    )
    assert 0.8 * 4.2 < spent < 4.2 < projected

    preflight = study_preflight(study=study)

    assert not preflight.passed
    assert preflight.reasons == (
        f"hospital-b: dataset 'data' has spent ε={spent:.2f} of its lifetime cap 4.2 "
        f"(δ=1e-05, rdp-balle2020); this run would bring it to {projected:.2f}",
    )
    error = refused_start(study)
    assert error.message.startswith("Start is blocked because the privacy preflight")
    assert "hospital-b" in error.message and f"{projected:.2f}" in error.message
    assert error.fields == {"preflight": list(preflight.reasons)}


def test_missing_and_stale_readiness_reports_block_the_start():
    study = ready_study()
    ReadinessReport.objects.filter(institution__slug="hospital-a").delete()
    ReadinessReport.objects.filter(institution__slug="hospital-b").update(protocol_sha256="f" * 64)

    reasons = refused_start(study).fields["preflight"]

    assert len(reasons) == 2
    assert reasons[0].startswith("hospital-a: its node has not reported its readiness")
    assert reasons[1].startswith("hospital-b: its readiness report is for protocol ffffffffffff…")
    assert "cohort-hospital heartbeat" in reasons[1]


def test_a_protocol_change_makes_every_report_stale():
    study = ready_study()
    new_hash = "e" * 64
    Study.objects.filter(pk=study.pk).update(protocol_sha256=new_hash)
    Enrollment.objects.filter(study=study).update(approved_protocol_sha256=new_hash)
    study.refresh_from_db()

    reasons = study_preflight(study=study).reasons

    assert [reason.split(":")[0] for reason in reasons] == ["hospital-a", "hospital-b"]
    assert all("not the current eeeeeeeeeeee…" in reason for reason in reasons)


def test_a_nodes_blockers_block_the_start():
    study = ready_study()
    ReadinessReport.objects.filter(institution__slug="hospital-a").update(
        blockers=[
            {"code": "missing-key", "reason": "no key for this study"},
            {"code": "consent-unavailable", "reason": "the portal's snapshot could not be read"},
        ]
    )

    reasons = refused_start(study).fields["preflight"]

    assert reasons == [
        "hospital-a: its node would refuse the run (missing-key): no key for this study",
        "hospital-a: its node would refuse the run (consent-unavailable): the portal's snapshot "
        "could not be read",
    ]


def test_a_missing_ledger_mirror_blocks_the_start():
    study = ready_study()
    LedgerMirror.objects.filter(institution__slug="hospital-b").delete()
    (reason,) = refused_start(study).fields["preflight"]
    assert reason.startswith(
        "hospital-b: the portal has no mirror of the privacy ledger of dataset 'hospital-b-data'"
    )


def test_a_run_that_cannot_be_planned_is_refused():
    study = ready_study()
    ReadinessReport.objects.filter(institution__slug="hospital-a").update(rows_train=0)
    (reason,) = refused_start(study).fields["preflight"]
    assert reason.startswith("hospital-a: DP training cannot be planned for 0 rows")


def test_a_plan_over_the_studys_target_is_refused(monkeypatch):
    study = ready_study()
    # A node planning with less noise than the target allows (the preflight's own check).
    loud = PrivacyStep(
        sample_rate=1 / 13, noise_multiplier=0.9, steps=13, delta=1e-5, accountant="rdp"
    )
    monkeypatch.setattr("privacy.selectors._planned", lambda *args: loud)
    reasons = refused_start(study).fields["preflight"]
    run_epsilon = epsilon_of([loud, loud], delta=1e-5, accountant="rdp")
    assert 3 < run_epsilon < 10
    assert reasons == [
        f"{slug}: a run would spend ε={run_epsilon:.3f}, more than the study's target 3 "
        "(δ=1e-05, rdp-balle2020)"
        for slug in ("hospital-a", "hospital-b")
    ]


def test_only_hospitals_that_approved_the_current_protocol_count():
    study = ready_study()
    EnrollmentFactory(study=study, state=Enrollment.State.INVITED)
    EnrollmentFactory(study=study, state=Enrollment.State.DECLINED)
    preflight = study_preflight(study=study)
    assert preflight.passed
    assert [row.institution.slug for row in preflight.rows] == ["hospital-a", "hospital-b"]
