import pytest
from django.contrib.auth.models import User

from core.errors import ConflictError, NotAllowedError, ValidationError
from core.models import AuditEvent
from crypto import SecretContext
from hospitals.protocol import StudyProtocol
from studies.models import Enrollment, Study
from studies.selectors import approved_institutions, full_protocol
from studies.services import (
    enrollment_decide,
    study_create,
    study_invite,
    study_set_he_context,
    study_transition,
    study_update_protocol,
)
from tests.portal.factories import (
    EnrollmentFactory,
    InstitutionFactory,
    ResearcherFactory,
    StewardFactory,
    StudyFactory,
    UserFactory,
    draft_protocol,
)

pytestmark = pytest.mark.django_db
S = Study.State

ALLOWED = [
    (S.DRAFT, S.RECRUITING),
    (S.DRAFT, S.CANCELLED),
    (S.RECRUITING, S.READY),
    (S.RECRUITING, S.CANCELLED),
    (S.READY, S.RECRUITING),
    (S.READY, S.RUNNING),
    (S.READY, S.CANCELLED),
    (S.RUNNING, S.COMPLETED),
    (S.RUNNING, S.FAILED),
    (S.RUNNING, S.CANCELLED),
]
ALL_PAIRS = [(a, b) for a in S for b in S]


@pytest.mark.parametrize(("start", "to"), ALLOWED)
def test_allowed_transitions_move_and_audit(start, to):
    study = StudyFactory(state=start)
    moved = study_transition(study=study, to=to, actor_label="tester", reason="because")
    assert moved.state == to
    study.refresh_from_db()
    assert study.state == to
    event = AuditEvent.objects.get(action="study.transition", target_id=str(study.pk))
    assert event.data == {"from": start.value, "to": to.value, "reason": "because"}
    assert event.actor_label == "tester"


@pytest.mark.parametrize(("start", "to"), [p for p in ALL_PAIRS if p not in ALLOWED])
def test_refused_transitions_change_nothing(start, to):
    study = StudyFactory(state=start)
    with pytest.raises(
        ConflictError, match=f"cannot move study '{study.slug}' from {start} to {to}"
    ):
        study_transition(study=study, to=to, actor_label="tester")
    study.refresh_from_db()
    assert study.state == start
    assert not AuditEvent.objects.filter(action="study.transition").exists()


def test_create_stores_canonical_protocol_with_forced_study_id():
    owner = ResearcherFactory()
    protocol = draft_protocol(slug="something-else")
    study = study_create(owner=owner, title=" Sepsis ", slug="sepsis-2026", protocol=protocol)
    study.refresh_from_db()
    assert study.title == "Sepsis"
    assert study.state == S.DRAFT
    assert study.protocol["study_id"] == "sepsis-2026"
    parsed = StudyProtocol.from_dict(study.protocol, require_encryption=False)
    assert study.protocol_sha256 == parsed.approval_sha256
    assert AuditEvent.objects.filter(action="study.created", target_id=str(study.pk)).exists()


def test_create_refuses_non_researchers():
    with pytest.raises(NotAllowedError):
        study_create(owner=UserFactory(), title="t", slug="s", protocol=draft_protocol())
    assert Study.objects.count() == 0


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda p: p.update(encryption={"scheme": "ckks"}), "protocol.encryption"),
        (lambda p: p["training"].update(batch_size=0), "protocol.training.batch_size"),
        (lambda p: p["training"].pop("learning_rate"), "protocol.training.learning_rate"),
        (
            lambda p: p["training"].update(holdout_fraction=1.5),
            "protocol.training.holdout_fraction",
        ),
        (lambda p: p["privacy"].update(accountant="magic"), "protocol.privacy.accountant"),
        (lambda p: p["privacy"].update(target_epsilon=-1), "protocol.privacy.target_epsilon"),
        (lambda p: p["federation"].update(min_hospitals=0), "protocol.federation.min_hospitals"),
        (lambda p: p.update(model={"name": "gpt"}), "protocol.model"),
        (lambda p: p.pop("schema"), "protocol"),
        (lambda p: p["schema"]["features"][0].update(minimum=10, maximum=1), "protocol.schema"),
    ],
)
def test_create_names_the_bad_field_and_writes_nothing(mutate, field):
    protocol = draft_protocol()
    mutate(protocol)
    with pytest.raises(ValidationError) as caught:
        study_create(owner=ResearcherFactory(), title="t", slug="s", protocol=protocol)
    assert any(key.startswith(field) for key in caught.value.fields), caught.value.fields
    assert Study.objects.count() == 0
    assert not AuditEvent.objects.filter(action="study.created").exists()


@pytest.mark.parametrize(("slug", "title"), [("not a slug", "t"), ("ok", ""), ("", "t")])
def test_create_refuses_bad_slug_or_title(slug, title):
    with pytest.raises(ValidationError):
        study_create(owner=ResearcherFactory(), title=title, slug=slug, protocol=draft_protocol())


def test_create_refuses_a_taken_slug():
    existing = StudyFactory()
    with pytest.raises(ValidationError) as caught:
        study_create(
            owner=ResearcherFactory(), title="t", slug=existing.slug, protocol=draft_protocol()
        )
    assert "slug" in caught.value.fields


def test_invite_opens_recruiting_once_and_is_idempotent():
    study = StudyFactory()
    a, b = InstitutionFactory(), InstitutionFactory()
    study_invite(study=study, institutions=[a], actor=study.owner)
    study.refresh_from_db()
    assert study.state == S.RECRUITING
    study_invite(study=study, institutions=[a, b], actor=study.owner)
    study_invite(study=study, institutions=[a, b], actor=study.owner)
    assert study.enrollments.count() == 2
    assert AuditEvent.objects.filter(action="study.invited").count() == 2
    assert AuditEvent.objects.filter(action="study.transition").count() == 1


def test_only_the_owner_invites():
    study = StudyFactory()
    with pytest.raises(NotAllowedError):
        study_invite(study=study, institutions=[InstitutionFactory()], actor=ResearcherFactory())
    assert study.enrollments.count() == 0


@pytest.mark.parametrize("state", [S.RUNNING, S.COMPLETED, S.FAILED, S.CANCELLED])
def test_no_invitations_once_running_or_final(state):
    study = StudyFactory(state=state)
    with pytest.raises(ConflictError):
        study_invite(study=study, institutions=[InstitutionFactory()], actor=study.owner)


def _recruiting(n: int = 2, min_hospitals: int = 2) -> tuple[Study, list[Enrollment], list[User]]:
    study = StudyFactory(state=S.RECRUITING, min_hospitals=min_hospitals)
    enrollments, stewards = [], []
    for _ in range(n):
        enrollment = EnrollmentFactory(study=study)
        enrollments.append(enrollment)
        stewards.append(StewardFactory(institution=enrollment.institution))
    return study, enrollments, stewards


def _decide(enrollment, steward, approve=True, sha=None):
    return enrollment_decide(
        enrollment=enrollment,
        steward=steward,
        approve=approve,
        protocol_sha256=sha or enrollment.study.protocol_sha256,
        comment="ok",
    )


def test_approvals_reaching_the_minimum_make_the_study_ready():
    study, enrollments, stewards = _recruiting()
    _decide(enrollments[0], stewards[0])
    study.refresh_from_db()
    assert study.state == S.RECRUITING
    _decide(enrollments[1], stewards[1])
    study.refresh_from_db()
    assert study.state == S.READY
    assert set(approved_institutions(study=study)) == {e.institution for e in enrollments}
    assert AuditEvent.objects.filter(action="enrollment.approved").count() == 2


def test_a_decline_after_ready_moves_back_to_recruiting():
    study, enrollments, stewards = _recruiting()
    _decide(enrollments[0], stewards[0])
    _decide(enrollments[1], stewards[1])
    _decide(enrollments[1], stewards[1], approve=False)
    study.refresh_from_db()
    enrollments[1].refresh_from_db()
    assert enrollments[1].state == Enrollment.State.DECLINED
    assert study.state == S.RECRUITING


def test_a_steward_cannot_decide_for_another_hospital():
    study, enrollments, stewards = _recruiting()
    with pytest.raises(NotAllowedError):
        _decide(enrollments[0], stewards[1])
    enrollments[0].refresh_from_db()
    assert enrollments[0].state == Enrollment.State.INVITED


def test_a_stale_hash_is_refused():
    study, enrollments, stewards = _recruiting()
    with pytest.raises(ConflictError, match="the protocol changed since you read it"):
        _decide(enrollments[0], stewards[0], sha="0" * 64)
    enrollments[0].refresh_from_db()
    assert enrollments[0].state == Enrollment.State.INVITED


@pytest.mark.parametrize("state", [S.RUNNING, S.COMPLETED, S.CANCELLED])
def test_no_decisions_once_running_or_final(state):
    study, enrollments, stewards = _recruiting()
    Study.objects.filter(pk=study.pk).update(state=state)
    with pytest.raises(ConflictError):
        _decide(enrollments[0], stewards[0])


def test_updating_the_protocol_voids_every_approval():
    study, enrollments, stewards = _recruiting()
    _decide(enrollments[0], stewards[0])
    _decide(enrollments[1], stewards[1])
    old_hash = Study.objects.get(pk=study.pk).protocol_sha256
    protocol = draft_protocol(slug=study.slug)
    protocol["federation"]["rounds"] = 9
    study = study_update_protocol(study=study, protocol=protocol, actor=study.owner)
    assert study.state == S.RECRUITING
    assert study.protocol_sha256 != old_hash
    assert set(study.enrollments.values_list("state", flat=True)) == {Enrollment.State.INVITED}
    event = AuditEvent.objects.get(action="study.protocol_updated")
    assert set(event.data["approvals_voided"]) == {e.institution.slug for e in enrollments}
    with pytest.raises(ConflictError):
        _decide(enrollments[0], stewards[0], sha=old_hash)


def test_only_the_owner_updates_the_protocol_and_never_after_running():
    study = StudyFactory(state=S.RUNNING)
    with pytest.raises(NotAllowedError):
        study_update_protocol(study=study, protocol=draft_protocol(), actor=ResearcherFactory())
    with pytest.raises(ConflictError):
        study_update_protocol(
            study=study, protocol=draft_protocol(min_hospitals=3), actor=study.owner
        )


@pytest.fixture(scope="module")
def study_key():
    return SecretContext.generate()


def test_he_context_is_pinned_by_an_approving_node(study_key):
    study, enrollments, stewards = _recruiting()
    _decide(enrollments[0], stewards[0])
    context = study_key.aggregator_context().to_bytes()
    study = study_set_he_context(
        study=study, aggregator_context=context, institution=enrollments[0].institution
    )
    assert study.he_context_fingerprint == study_key.fingerprint
    document = full_protocol(study=study)
    assert document["encryption"]["context_fingerprint"] == study_key.fingerprint
    parsed = StudyProtocol.from_dict(document)
    assert parsed.approval_sha256 == study.protocol_sha256
    # Idempotent for the same context; another study key is refused.
    study_set_he_context(
        study=study, aggregator_context=context, institution=enrollments[0].institution
    )
    other = SecretContext.generate().aggregator_context().to_bytes()
    with pytest.raises(ConflictError):
        study_set_he_context(
            study=study, aggregator_context=other, institution=enrollments[0].institution
        )


def test_he_context_refuses_keys_garbage_and_strangers(study_key):
    study, enrollments, stewards = _recruiting()
    _decide(enrollments[0], stewards[0])
    with pytest.raises(ValidationError):
        study_set_he_context(
            study=study,
            aggregator_context=b"COHC" + b"\0" * 40,
            institution=enrollments[0].institution,
        )
    with pytest.raises(NotAllowedError):
        study_set_he_context(
            study=study,
            aggregator_context=study_key.aggregator_context().to_bytes(),
            institution=enrollments[1].institution,
        )
    study.refresh_from_db()
    assert study.he_context_fingerprint == ""
