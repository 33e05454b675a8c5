"""Writes about studies: the state machine, protocols, invitations, approvals and the HE context.

Each service runs in one transaction together with its audit record; state changes lock the
study row first, so concurrent decisions and runs see one order of events.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import validate_slug
from django.db import IntegrityError, transaction
from django.utils import timezone

from core.audit import audit_record
from core.errors import ConflictError, NotAllowedError, ValidationError
from crypto import AggregatorContext, CryptoError
from hospitals.models import ModelSpecError
from hospitals.protocol import ENCRYPTION, ProtocolError, StudyProtocol, canonical_json
from hospitals.schema import SchemaError
from institutions.models import Institution
from institutions.selectors import is_researcher, is_steward_of
from studies.models import Enrollment, Study
from studies.selectors import approval_count, min_hospitals

State = Study.State

TRANSITIONS: dict[str, frozenset[str]] = {
    State.DRAFT: frozenset({State.RECRUITING, State.CANCELLED}),
    State.RECRUITING: frozenset({State.READY, State.CANCELLED}),
    # Back to recruiting when approvals drop below the minimum; to running only via runs.
    State.READY: frozenset({State.RECRUITING, State.RUNNING, State.CANCELLED}),
    State.RUNNING: frozenset({State.COMPLETED, State.FAILED, State.CANCELLED}),
    State.COMPLETED: frozenset(),
    State.FAILED: frozenset(),
    State.CANCELLED: frozenset(),
}
EDITABLE_STATES = frozenset({State.DRAFT, State.RECRUITING, State.READY})
DECIDABLE_STATES = frozenset({State.RECRUITING, State.READY})
MAX_TITLE_LENGTH = 200
MAX_SLUG_LENGTH = 64
HE_CONTEXT_MAX_BYTES = 4096

# Where a protocol error points, for errors whose message names only the leaf field.
_LEAF_SECTIONS = {
    "local_epochs": "training",
    "batch_size": "training",
    "learning_rate": "training",
    "seed": "training",
    "holdout_fraction": "training",
    "target_epsilon": "privacy",
    "delta": "privacy",
    "max_grad_norm": "privacy",
    "accountant": "privacy",
    "rounds": "federation",
    "min_hospitals": "federation",
    "round_timeout_s": "federation",
}
_SECTIONS = ("study_id", "schema", "model", "training", "privacy", "federation")


def study_transition(
    *,
    study: Study,
    to: Study.State,
    actor_label: str,
    reason: str = "",
    actor: User | None = None,
) -> Study:
    """Move `study` to `to` if the state machine allows it; returns the locked, updated row."""
    with transaction.atomic():
        locked = Study.objects.select_for_update().get(pk=study.pk)
        current = State(locked.state)
        target = State(to)
        if target not in TRANSITIONS[current]:
            allowed = ", ".join(sorted(TRANSITIONS[current])) or "nothing (it is final)"
            raise ConflictError(
                f"cannot move study '{locked.slug}' from {current} to {target}; "
                f"from {current} it can move to: {allowed}"
            )
        locked.state = target
        locked.save(update_fields=["state", "updated_at"])
        audit_record(
            action="study.transition",
            target=locked,
            actor=actor,
            actor_label=actor_label,
            data={"from": current.value, "to": target.value, "reason": reason},
        )
    study.state = locked.state
    return locked


def study_create(*, owner: User, title: str, slug: str, protocol: dict[str, Any]) -> Study:
    if not is_researcher(owner):
        raise NotAllowedError("only researchers may create studies; ask an admin to add you")
    title = _check_title(title)
    _check_slug(slug)
    document, protocol_sha256 = _validated_protocol(protocol, slug=slug)
    try:
        with transaction.atomic():
            study = Study.objects.create(
                owner=owner,
                title=title,
                slug=slug,
                protocol=document,
                protocol_sha256=protocol_sha256,
            )
            audit_record(
                action="study.created",
                target=study,
                actor=owner,
                data={"slug": slug, "protocol_sha256": protocol_sha256},
            )
    except IntegrityError as error:
        raise _slug_taken(slug) from error
    return study


def study_update_protocol(*, study: Study, protocol: dict[str, Any], actor: User) -> Study:
    """Replace the protocol; every approval is voided, since stewards approved the old hash."""
    _require_owner(study, actor)
    document, protocol_sha256 = _validated_protocol(protocol, slug=study.slug)
    with transaction.atomic():
        locked = Study.objects.select_for_update().get(pk=study.pk)
        if locked.state not in EDITABLE_STATES:
            raise ConflictError(
                f"the protocol of study '{locked.slug}' is frozen once it is {locked.state}"
            )
        if protocol_sha256 == locked.protocol_sha256:
            return locked
        decided = list(locked.enrollments.exclude(state=Enrollment.State.INVITED))
        voided = {e.institution.slug: e.state for e in decided}
        for enrollment in decided:
            enrollment.state = Enrollment.State.INVITED
            enrollment.approved_protocol_sha256 = ""
            enrollment.decided_by = None
            enrollment.decided_at = None
            enrollment.comment = ""
            enrollment.save()
        previous = locked.protocol_sha256
        locked.protocol = document
        locked.protocol_sha256 = protocol_sha256
        locked.save(update_fields=["protocol", "protocol_sha256", "updated_at"])
        audit_record(
            action="study.protocol_updated",
            target=locked,
            actor=actor,
            data={
                "from_sha256": previous,
                "to_sha256": protocol_sha256,
                "approvals_voided": voided,
            },
        )
        if locked.state == State.READY:
            locked = study_transition(
                study=locked,
                to=State.RECRUITING,
                actor_label=actor.get_username(),
                actor=actor,
                reason="protocol changed; approvals voided",
            )
    return locked


def study_invite(
    *, study: Study, institutions: Iterable[Institution], actor: User
) -> list[Enrollment]:
    """Invite hospitals (idempotent); the first invitation opens recruiting."""
    _require_owner(study, actor)
    institutions = list(institutions)
    if not institutions:
        raise ValidationError(
            "choose at least one hospital to invite", fields={"institutions": ["empty"]}
        )
    with transaction.atomic():
        locked = Study.objects.select_for_update().get(pk=study.pk)
        if locked.state not in EDITABLE_STATES:
            raise ConflictError(
                f"study '{locked.slug}' is {locked.state}; hospitals can only be invited "
                "before it runs"
            )
        enrollments = []
        invited = []
        for institution in institutions:
            enrollment, created = Enrollment.objects.get_or_create(
                study=locked, institution=institution
            )
            enrollments.append(enrollment)
            if created:
                invited.append(institution.slug)
        if invited:
            audit_record(
                action="study.invited", target=locked, actor=actor, data={"institutions": invited}
            )
        if locked.state == State.DRAFT:
            study_transition(
                study=locked,
                to=State.RECRUITING,
                actor_label=actor.get_username(),
                actor=actor,
                reason="first hospitals invited",
            )
    study.state = locked.state
    return enrollments


def enrollment_decide(
    *,
    enrollment: Enrollment,
    steward: User,
    approve: bool,
    protocol_sha256: str,
    comment: str,
) -> Enrollment:
    """A steward approves or declines the protocol hash they read; the study follows the count."""
    if not is_steward_of(user=steward, institution=enrollment.institution):
        raise NotAllowedError(
            f"you are not a data steward of {enrollment.institution.name}; only its stewards "
            "can decide for it"
        )
    with transaction.atomic():
        study = Study.objects.select_for_update().get(pk=enrollment.study_id)
        if study.state not in DECIDABLE_STATES:
            raise ConflictError(
                f"study '{study.slug}' is {study.state}; decisions are taken while it recruits"
            )
        if protocol_sha256 != study.protocol_sha256:
            raise ConflictError(
                "the protocol changed since you read it; reload the study and review the "
                f"current protocol (sha256 {study.protocol_sha256[:12]}…)",
                fields={"protocol_sha256": ["does not match the current protocol"]},
            )
        enrollment = Enrollment.objects.select_for_update().get(pk=enrollment.pk)
        enrollment.state = Enrollment.State.APPROVED if approve else Enrollment.State.DECLINED
        enrollment.approved_protocol_sha256 = protocol_sha256 if approve else ""
        enrollment.decided_by = steward
        enrollment.decided_at = timezone.now()
        enrollment.comment = comment.strip()
        enrollment.save()
        audit_record(
            action="enrollment.approved" if approve else "enrollment.declined",
            target=enrollment,
            actor=steward,
            data={
                "study": study.slug,
                "institution": enrollment.institution.slug,
                "protocol_sha256": protocol_sha256,
                "comment": enrollment.comment,
            },
        )
        _follow_approvals(study, actor=steward)
    return enrollment


def study_set_he_context(
    *, study: Study, aggregator_context: bytes, institution: Institution
) -> Study:
    """Pin the study's keyless CKKS context, uploaded by the node of an approving hospital."""
    if len(aggregator_context) > HE_CONTEXT_MAX_BYTES:
        raise ValidationError(
            f"the aggregator context is {len(aggregator_context)} bytes; a keyless context is "
            f"~120 bytes and at most {HE_CONTEXT_MAX_BYTES} are accepted (was a key file sent?)",
            fields={"aggregator_context": ["too large"]},
        )
    try:
        context = AggregatorContext.from_bytes(aggregator_context, max_bytes=HE_CONTEXT_MAX_BYTES)
    except (CryptoError, TypeError) as error:
        raise ValidationError(
            f"refused the aggregator context: {error}",
            fields={"aggregator_context": [str(error)]},
        ) from error
    with transaction.atomic():
        locked = Study.objects.select_for_update().get(pk=study.pk)
        if not locked.enrollments.filter(
            institution=institution,
            state=Enrollment.State.APPROVED,
            approved_protocol_sha256=locked.protocol_sha256,
        ).exists():
            raise NotAllowedError(
                f"{institution.slug} has not approved the current protocol of '{locked.slug}'"
            )
        if locked.state not in EDITABLE_STATES:
            raise ConflictError(
                f"study '{locked.slug}' is {locked.state}; its HE context is fixed before it runs"
            )
        if locked.he_context_fingerprint == context.fingerprint:
            return locked
        if locked.he_context_fingerprint:
            raise ConflictError(
                f"study '{locked.slug}' already has HE context "
                f"{locked.he_context_fingerprint[:16]}…; every hospital must use that study key"
            )
        locked.he_aggregator_context = aggregator_context
        locked.he_context_fingerprint = context.fingerprint
        locked.save(update_fields=["he_aggregator_context", "he_context_fingerprint", "updated_at"])
        audit_record(
            action="study.he_context_set",
            target=locked,
            actor_label=f"node:{institution.slug}",
            data={
                "institution": institution.slug,
                "fingerprint": context.fingerprint,
                "params": context.params.to_dict(),
            },
        )
    return locked


def _follow_approvals(study: Study, *, actor: User) -> None:
    approvals = approval_count(study=study)
    needed = min_hospitals(study=study)
    label = actor.get_username()
    reason = f"{approvals} of {needed} required approvals"
    if study.state == State.RECRUITING and approvals >= needed:
        study_transition(study=study, to=State.READY, actor_label=label, actor=actor, reason=reason)
    elif study.state == State.READY and approvals < needed:
        study_transition(
            study=study, to=State.RECRUITING, actor_label=label, actor=actor, reason=reason
        )


def _require_owner(study: Study, actor: User) -> None:
    if study.owner_id != actor.pk:
        raise NotAllowedError(f"only the owner of study '{study.slug}' may do this")


def _check_title(title: str) -> str:
    title = (title or "").strip()
    if not title or len(title) > MAX_TITLE_LENGTH:
        raise ValidationError(
            f"a study title has 1 to {MAX_TITLE_LENGTH} characters",
            fields={"title": [f"1 to {MAX_TITLE_LENGTH} characters"]},
        )
    return title


def _check_slug(slug: str) -> None:
    try:
        if not slug or len(slug) > MAX_SLUG_LENGTH:
            raise DjangoValidationError(f"1 to {MAX_SLUG_LENGTH} characters")
        validate_slug(slug)
    except DjangoValidationError as error:
        raise ValidationError(
            f"'{slug}' is not a valid study slug: 1 to {MAX_SLUG_LENGTH} letters, digits, "
            "'-' or '_'",
            fields={"slug": list(error.messages)},
        ) from error
    if Study.objects.filter(slug=slug).exists():
        raise _slug_taken(slug)


def _slug_taken(slug: str) -> ValidationError:
    return ValidationError(
        f"a study with slug '{slug}' already exists; choose another slug",
        fields={"slug": ["already taken"]},
    )


def _validated_protocol(protocol: Any, *, slug: str) -> tuple[dict[str, Any], str]:
    """The canonical document (study_id forced to the slug) and its approval hash."""
    if not isinstance(protocol, dict):
        raise ValidationError(
            "the protocol must be a JSON object", fields={"protocol": ["must be an object"]}
        )
    if ENCRYPTION in protocol:
        raise ValidationError(
            "the protocol must not carry an 'encryption' block: the portal pins it from the "
            "hospital's keyless HE context after approval",
            fields={"protocol.encryption": ["not allowed in a study protocol"]},
        )
    try:
        document = json.loads(canonical_json({**protocol, "study_id": slug}))
    except (TypeError, ValueError) as error:
        raise ValidationError(
            f"the protocol is not plain JSON: {error}", fields={"protocol": [str(error)]}
        ) from error
    try:
        parsed = StudyProtocol.from_dict(document, require_encryption=False)
    except ProtocolError as error:
        message = str(error)
        raise ValidationError(
            f"invalid protocol: {message}", fields={_protocol_field(error): [message]}
        ) from error
    return document, parsed.approval_sha256


def _protocol_field(error: ProtocolError) -> str:
    """The dotted path of the field a protocol error is about, as precisely as it says."""
    cause = error.__cause__
    message = str(error)
    if isinstance(cause, SchemaError):
        return f"protocol.schema.{cause.field}"
    if isinstance(cause, ModelSpecError):
        return "protocol.model"
    if isinstance(cause, KeyError) and cause.args and str(cause.args[0]) in _LEAF_SECTIONS:
        leaf = str(cause.args[0])
        return f"protocol.{_LEAF_SECTIONS[leaf]}.{leaf}"
    named = re.search(r"protocol field '(\w+)'", message)
    if named:
        leaf = named.group(1)
        section = _LEAF_SECTIONS.get(leaf)
        return f"protocol.{section}.{leaf}" if section else f"protocol.{leaf}"
    dotted = re.search(r"\b(training|privacy|federation)\.(\w+)", message)
    if dotted:
        return f"protocol.{dotted.group(1)}.{dotted.group(2)}"
    if "Accountant" in message:
        return "protocol.privacy.accountant"
    for leaf, section in _LEAF_SECTIONS.items():
        if re.search(rf"\b{leaf}\b", message):
            return f"protocol.{section}.{leaf}"
    for section in _SECTIONS:
        if f"'{section}'" in message:
            return f"protocol.{section}"
    return "protocol"
