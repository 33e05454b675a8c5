"""What a node tells the portal about itself: its privacy ledger and its readiness per study.

The node's ledger is the authority on ε; the portal keeps a mirror of its entries (and recomputes
ε from them) for display and for the preflight of a run. A readiness report is the node's own
view of a study: the rows it would use after its consent filter and holdout split, and anything
that would make it refuse a round. Neither carries rows or patient identifiers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hospitals.consent import ConsentSource, PortalConsentSource
from hospitals.ledger import LedgerEntry, PrivacyLedger
from hospitals.node import NodeSettings
from hospitals.participation import assess
from hospitals.policy import NodePolicy, PolicyError, load_policy
from hospitals.portal_client import PortalClient, PortalError
from hospitals.protocol import ProtocolError, StudyProtocol


def ledger_report(node: NodeSettings, policy: NodePolicy) -> dict[str, Any]:
    """The node's whole ledger for its dataset, with the policy's cap, as `POST /api/node/ledger/`
    takes it."""
    entries = PrivacyLedger(node.ledger_path).entries(dataset_id=node.dataset_id)
    return {
        "datasets": [
            {
                "dataset_id": node.dataset_id,
                "max_lifetime_epsilon": policy.max_lifetime_epsilon,
                "delta": policy.delta,
                "accountant": policy.accountant.value,
                "min_cohort_size": policy.min_cohort_size,
                "entries": [entry_report(entry) for entry in entries],
            }
        ]
    }


def entry_report(entry: LedgerEntry) -> dict[str, Any]:
    """One round the ledger charged, with exactly what recomputing its ε needs."""
    return {
        "study_id": entry.study_id,
        "run_id": entry.run_id,
        "round": entry.round_number,
        "sample_rate": entry.step.sample_rate,
        "noise_multiplier": entry.step.noise_multiplier,
        "steps": entry.step.steps,
        "delta": entry.step.delta,
        "accountant": entry.step.accountant.value,
        "recorded_at": entry.recorded_at.isoformat(),
    }


def readiness_report(
    node: NodeSettings, protocol: StudyProtocol, consent: ConsentSource | None = None
) -> dict[str, Any]:
    """The node's readiness for `protocol`, as `POST /api/node/studies/<slug>/readiness/` takes
    it: the same checks as a round (a missing key is a blocker), no training."""
    readiness = assess(node, protocol, consent=consent)
    basis = readiness.consent
    return {
        "dataset_id": node.dataset_id,
        "protocol_sha256": protocol.approval_sha256,
        "consent_sha256": basis.snapshot.sha256 if basis and basis.snapshot else None,
        "consent_waiver": basis.waiver if basis else None,
        "rows_train": readiness.rows_train,
        "rows_holdout": readiness.rows_holdout,
        "blockers": [
            {"code": blocker.code, "reason": blocker.reason} for blocker in readiness.blockers
        ],
    }


@dataclass(frozen=True)
class StudyReport:
    study: str
    readiness: dict[str, Any] | None  # what was sent; None when it could not be
    error: str | None = None


@dataclass(frozen=True)
class PortalReport:
    ledger: dict[str, Any] | None  # the portal's answer: ε per dataset as it recomputed it
    ledger_error: str | None
    studies: tuple[StudyReport, ...]

    @property
    def ok(self) -> bool:
        return self.ledger_error is None and all(s.error is None for s in self.studies)


def report_to_portal(
    node: NodeSettings, client: PortalClient, *, supernode: str = "online"
) -> PortalReport:
    """Heartbeat, then the ledger mirror, then a readiness report per study this hospital
    approved. One failing part does not stop the others; PortalReport says which failed."""
    client.heartbeat({"supernode": supernode})
    ledger: dict[str, Any] | None = None
    ledger_error = None
    try:
        ledger = client.report_ledger(ledger_report(node, load_policy(node.policy_path)))
    except (PolicyError, PortalError) as error:
        ledger_error = str(error)
    source = PortalConsentSource(client)
    studies = []
    for study in client.approved_protocols():
        slug = str(study.get("slug", ""))
        try:
            protocol = StudyProtocol.from_dict(study.get("protocol"), require_encryption=False)
            if protocol.study_id != slug:
                raise ProtocolError(
                    f"the portal lists study '{slug}' with the protocol of '{protocol.study_id}'"
                )
            readiness = readiness_report(node, protocol, consent=source)
            client.report_readiness(study_slug=slug, report=readiness)
        except (ProtocolError, PortalError) as error:
            studies.append(StudyReport(study=slug, readiness=None, error=str(error)))
        else:
            studies.append(StudyReport(study=slug, readiness=readiness))
    return PortalReport(ledger=ledger, ledger_error=ledger_error, studies=tuple(studies))
