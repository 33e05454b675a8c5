"""Assemble report.json from the run's events, the nodes' own records and the comparison models."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import tenseal

from crypto import AggregatorContext, SecretContext, encrypt_update
from demo import baselines
from demo.setup import Consortium
from federation.runner import RunOutcome
from hospitals.data import load_dataset
from hospitals.dp import EPSILON_CONVERSIONS
from hospitals.ledger import PrivacyLedger
from hospitals.models import parameter_count
from hospitals.participation import released_model_path


def build_report(
    consortium: Consortium,
    outcome: RunOutcome,
    *,
    wall_seconds: float,
    projected_epsilon: Mapping[str, float | None],
) -> dict[str, Any]:
    """The run's report; `projected_epsilon` is what the portal's preflight projected per
    hospital before the start, shown beside what each node's ledger says it spent."""
    protocol = consortium.protocol
    started = next((e for e in outcome.events if e["event"] == "run-started"), {})
    report: dict[str, Any] = {
        "generated_at": datetime.now(UTC).isoformat(),
        "study": {
            "study_id": protocol.study_id,
            "protocol": protocol.document,
            "protocol_sha256": protocol.sha256,
            "hospitals": [spec.hospital for spec in consortium.hospitals],
        },
        "run": {
            "run_id": str(outcome.run_id),
            "status": "completed" if outcome.status.succeeded else "failed",
            "reason": "" if outcome.status.succeeded else outcome.failure_reason,
            "wall_seconds": round(wall_seconds, 1),
        },
        "rounds": [round_summary(event) for event in outcome.rounds],
        "privacy": privacy_summary(consortium, outcome, projected_epsilon=projected_epsilon),
        "aggregator": aggregator_summary(consortium, started.get("aggregator", {})),
        "encryption": encryption_summary(consortium, outcome),
    }
    if outcome.status.succeeded:
        report["final"] = final_comparison(consortium, outcome)
    return report


def round_summary(event: dict[str, Any]) -> dict[str, Any]:
    hospitals = event["hospitals"]
    return {
        "round": event["round"],
        "participants": event["participants"],
        "dropped": event["dropped"],
        "metrics": event["metrics"],
        "epsilon": {h["hospital"]: h["epsilon"] for h in hospitals},
        "bytes_up": {h["hospital"]: h["bytes_up"] for h in hospitals},
        "bytes_down": event["bytes_down"],
        "seconds": event["seconds"],
    }


def privacy_summary(
    consortium: Consortium, outcome: RunOutcome, *, projected_epsilon: Mapping[str, float | None]
) -> dict[str, Any]:
    """Read back from each node's ledger, the authority: ε recomputed from what it recorded."""
    privacy = consortium.protocol.privacy
    consent = last_consent(outcome.events)
    summary: dict[str, Any] = {}
    for node in list(consortium.nodes.values()):
        ledger = PrivacyLedger(node.ledger_path)
        entries = ledger.entries(dataset_id=node.dataset_id, run_id=str(outcome.run_id))
        if not entries:
            continue
        last = entries[-1].step
        summary[node.hospital] = {
            "accountant": str(last.accountant),
            "conversion": EPSILON_CONVERSIONS[last.accountant],
            "delta": last.delta,
            "epsilon": ledger.epsilon(
                dataset_id=node.dataset_id,
                delta=privacy.delta,
                accountant=privacy.accountant,
                run_id=str(outcome.run_id),
            ),
            "projected_epsilon": projected_epsilon.get(node.hospital),
            "target_epsilon": privacy.target_epsilon,
            "consent": consent.get(node.hospital, ""),
            "noise_multiplier": last.noise_multiplier,
            "sample_rate": last.sample_rate,
            "steps": sum(entry.step.steps for entry in entries),
            "rounds": len(entries),
        }
    return summary


def last_consent(events: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Each hospital's consent basis in the last round it trained: a snapshot hash or a waiver."""
    consent: dict[str, str] = {}
    for event in events:
        if event["event"] == "round":
            consent.update({h["hospital"]: h.get("consent", "") for h in event["hospitals"]})
    return consent


def aggregator_summary(consortium: Consortium, facts: dict[str, Any]) -> dict[str, Any]:
    """The facts the aggregator reported, plus a decryption attempt with exactly its context."""
    return {**facts, "decrypt_attempt": decryption_attempt(consortium.key)}


def decryption_attempt(key: SecretContext) -> str:
    """Try to decrypt a real ciphertext of the study with the aggregator's context, as an attacker
    holding it would: straight through TenSEAL, bypassing the crypto library's own checks."""
    aggregator = AggregatorContext.from_bytes(key.aggregator_context().to_bytes())
    probe = encrypt_update(key, values=np.ones(4), weight=1.0)
    ciphertext = tenseal.ckks_vector_from(aggregator.tenseal_context, probe.chunks[0])
    try:
        ciphertext.decrypt()
    except ValueError as error:
        return f"refused by TenSEAL: {error}"
    return "DECRYPTED: the aggregator's context holds a key"


def encryption_summary(consortium: Consortium, outcome: RunOutcome) -> dict[str, Any]:
    parameters = parameter_count(baselines.fresh_model(consortium.protocol))
    sizes = [h["bytes_up"] for event in outcome.rounds for h in event["hospitals"]]
    update_bytes = int(np.median(sizes)) if sizes else 0
    float32_bytes = parameters * 4
    return {
        "params": consortium.key.params.to_dict(),
        "parameters": parameters,
        "update_bytes": update_bytes,
        "float32_bytes": float32_bytes,
        "expansion": round(update_bytes / float32_bytes, 1) if update_bytes else None,
    }


def released_model_path_of(consortium: Consortium, outcome: RunOutcome) -> Path:
    """Where the key-holding hospital's node kept the final model it decrypted."""
    node = next(iter(consortium.nodes.values()))
    return released_model_path(
        node, study_id=consortium.protocol.study_id, run_id=str(outcome.run_id)
    )


def final_comparison(consortium: Consortium, outcome: RunOutcome) -> dict[str, Any]:
    protocol = consortium.protocol
    test = load_dataset(consortium.files.test, protocol.schema)
    nodes = list(consortium.nodes.values())
    released = np.load(released_model_path_of(consortium, outcome))
    federated = baselines.released(protocol, released["parameters"])
    trains = {
        node.hospital: baselines.training_rows(
            protocol, node.data_path, consent_export=consortium.consent_exports.get(node.hospital)
        )
        for node in nodes
    }
    local = {
        name: baselines.metrics_on(
            baselines.local_only(protocol, train, seed=protocol.seed + index), test
        ).to_dict()
        for index, (name, train) in enumerate(trains.items())
    }
    centralized = baselines.centralized(protocol, list(trains.values()), seed=protocol.seed)
    return {
        "test_rows": len(test),
        "federated": baselines.metrics_on(federated, test).to_dict(),
        "local_only": local,
        "centralized": baselines.metrics_on(centralized, test).to_dict(),
    }
