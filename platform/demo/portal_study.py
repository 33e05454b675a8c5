"""The demo's consortium acting through the portal, with the services its web pages use.

Imported only after Django is set up (demo.portal_stack.running_portal). People act through
services, exactly as their forms would; hospital nodes act through the node API with their tokens.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.models import Group, User

from consent.services import consent_form_publish
from demo.setup import STUDY_ID, Consortium
from hospitals.consent import import_consent_export
from hospitals.portal_client import PortalClient
from hospitals.reporting import report_to_portal
from institutions.models import Institution
from institutions.services import institution_create, node_token_issue, steward_add
from privacy.models import RunPreflight
from privacy.selectors import Preflight, study_preflight
from runs.models import Run
from runs.services import release_approve, run_start
from studies.models import Enrollment, Study
from studies.services import enrollment_decide, study_create, study_invite

RESEARCHERS = "researchers"
CONSENT_FORM_TITLE = "Use of my records for federated breast cancer research"
CONSENT_FORM_TEXT = (
    "My hospital may use my pseudonymised records to train a shared breast cancer risk model "
    "with other hospitals. My records never leave my hospital; only encrypted, differentially "
    "private model updates do. I can withdraw at any time; my records are then no longer used "
    "from the next training round on."
)
POLL_S = 1.0


@dataclass
class Accounts:
    """Everyone the demo seeds, with the passwords printed for the person trying the portal."""

    admin: User
    researcher: User
    stewards: dict[str, User]
    passwords: dict[str, str] = field(default_factory=dict)


def _user(accounts: Accounts, username: str, **extra: Any) -> User:
    password = secrets.token_urlsafe(9)
    accounts.passwords[username] = password
    return User.objects.create_user(username=username, password=password, **extra)


def seed_accounts(consortium: Consortium) -> Accounts:
    accounts = Accounts(admin=None, researcher=None, stewards={})  # type: ignore[arg-type]
    accounts.admin = _user(accounts, "admin", is_staff=True, is_superuser=True)
    accounts.researcher = _user(accounts, "researcher")
    accounts.researcher.groups.add(Group.objects.get_or_create(name=RESEARCHERS)[0])
    for spec in consortium.hospitals:
        letter = spec.hospital.rsplit("-", 1)[-1]
        institution = institution_create(
            name=f"Hospital {letter.upper()}", slug=spec.hospital, actor=accounts.admin
        )
        steward = _user(accounts, f"steward-{letter}")
        steward_add(user=steward, institution=institution, actor=accounts.admin)
        accounts.stewards[spec.hospital] = steward
        _, raw = node_token_issue(institution=institution, label="demo node", actor=accounts.admin)
        # Hospital IT keeps the token in the node's state directory, readable only by the node.
        spec.state_dir.mkdir(parents=True, exist_ok=True)
        token_path = consortium.nodes[spec.hospital].portal_token_path
        token_path.touch(mode=0o600)
        token_path.write_text(raw, encoding="utf-8")
    return accounts


def open_study(accounts: Accounts, consortium: Consortium) -> Study:
    """Create with a consent form, invite, approve; the key-holding hospital's node pins the
    study's HE context; every node imports its consent export and reports to the portal."""
    draft = {k: v for k, v in consortium.protocol.document.items() if k != "encryption"}
    study = study_create(
        owner=accounts.researcher, title="Breast cancer risk (demo)", slug=STUDY_ID, protocol=draft
    )
    consent_form_publish(
        study=study, title=CONSENT_FORM_TITLE, text=CONSENT_FORM_TEXT, actor=accounts.researcher
    )
    study_invite(study=study, institutions=Institution.objects.all(), actor=accounts.researcher)
    for enrollment in Enrollment.objects.filter(study=study).select_related("institution"):
        enrollment_decide(
            enrollment=enrollment,
            steward=accounts.stewards[enrollment.institution.slug],
            approve=True,
            protocol_sha256=study.protocol_sha256,
            comment="Approved by the ethics board for the demo.",
        )
    nodes = consortium.nodes
    key_holder = PortalClient.for_node(nodes[consortium.hospitals[0].hospital])
    key_holder.upload_he_context(
        study_slug=study.slug, aggregator_context=consortium.key.aggregator_context().to_bytes()
    )
    for hospital, node in nodes.items():
        client = PortalClient.for_node(node)
        import_consent_export(
            node, study=study.slug, path=consortium.consent_exports[hospital], portal=client
        )
        report = report_to_portal(node, client)
        if not report.ok:
            raise RuntimeError(f"{hospital}'s node could not report to the portal: {report}")
    return Study.objects.get(pk=study.pk)


def preflight_of(study: Study) -> Preflight:
    return study_preflight(study=study)


def start(study: Study, accounts: Accounts) -> Run:
    return run_start(study=study, actor=accounts.researcher)


def projected_epsilon(run: Run) -> dict[str, float | None]:
    """The run ε per hospital that the preflight projected when the run started."""
    projection = RunPreflight.objects.get(run=run).projection
    return {row["institution"]: row["run_epsilon"] for row in projection["hospitals"]}


def round_event(round_: Any) -> dict[str, Any]:
    """A recorded round in the aggregator's own event shape (what progress and report read)."""
    return {
        "event": "round",
        "round": round_.number,
        "participants": round_.participants,
        "dropped": round_.dropped,
        "metrics": round_.metrics,
        "hospitals": [
            {
                "hospital": h.hospital,
                "epsilon": h.epsilon,
                "noise_multiplier": h.noise_multiplier,
                "sample_rate": h.sample_rate,
                "steps": h.steps,
                "delta": h.delta,
                "accountant": h.accountant,
                "epsilon_conversion": h.epsilon_conversion,
                "consent": h.consent,
                "rows_rounded": h.rows_rounded,
                "bytes_up": h.bytes_up,
                "train_seconds": h.train_seconds,
                "metrics": h.metrics,
            }
            for h in round_.hospitals.all()
        ],
        "bytes_down": round_.bytes_down,
        "seconds": round_.seconds,
    }


def follow(
    run: Run, *, on_event: Callable[[dict[str, Any]], None], timeout_s: float
) -> list[dict[str, Any]]:
    """Poll the database (the run's single source of truth) until the run finishes."""
    events: list[dict[str, Any]] = []
    started_seen = False
    deadline = time.monotonic() + timeout_s
    while True:
        run.refresh_from_db()
        if run.aggregator_facts and not started_seen:
            started_seen = True
            events.append(
                {
                    "event": "run-started",
                    "study_id": run.study.slug,
                    "run_id": str(int(run.flower_run_id or 0)),
                    "rounds": run.rounds_planned,
                    "aggregator": run.aggregator_facts,
                }
            )
            on_event(events[-1])
        recorded = {e["round"] for e in events if e["event"] == "round"}
        for round_ in run.rounds.exclude(number__in=recorded).order_by("number"):
            events.append(round_event(round_))
            on_event(events[-1])
        if run.finished:
            finished = {"event": "run-finished", "status": run.state, "reason": run.reason}
            events.append(finished)
            on_event(finished)
            return events
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run.pk} did not finish within {timeout_s:g} s")
        time.sleep(POLL_S)


def release(
    run: Run,
    accounts: Accounts,
    consortium: Consortium,
    *,
    parameters: bytes,
    privacy_report: dict[str, Any],
) -> None:
    """Stewards approve the release; the key-holding hospital's node uploads the final model."""
    for steward in accounts.stewards.values():
        release_approve(run=run, actor=steward)
    key_holder = consortium.nodes[consortium.hospitals[0].hospital]
    PortalClient.for_node(key_holder).upload_release(
        run_id=run.pk, parameters=parameters, privacy_report=privacy_report
    )
