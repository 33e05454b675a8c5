"""Prepare the demo consortium: data, the study protocol, the HE key ceremony and hospital nodes."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aggregator.config import weight_unit_for
from crypto import PACKED_PARAMS, CkksParams, SecretContext
from federation.deployment import HospitalNodeSpec
from hospitals.demo_data import (
    BREAST_CANCER_SCHEMA,
    DemoFiles,
    write_breast_cancer_demo,
    write_consent_export,
)
from hospitals.keys import save_study_key
from hospitals.node import NodeSettings
from hospitals.participation import published_rows
from hospitals.protocol import StudyProtocol, canonical_json

STUDY_ID = "breast-cancer-demo"


@dataclass(frozen=True)
class DemoSettings:
    out_dir: Path
    rounds: int = 5
    local_epochs: int = 1
    target_epsilon: float = 3.0
    delta: float = 1e-5
    seed: int = 7
    min_hospitals: int = 2
    round_timeout_s: int = 300
    # With a portal, nodes pull the study's consent from it every round; without one (engine
    # tests), their policy cites DEMO_CONSENT_WAIVER instead.
    portal_url: str | None = None
    # Packed updates (1x float32 on the wire); CkksParams() gives one value per slot instead.
    he_params: CkksParams = PACKED_PARAMS


@dataclass(frozen=True)
class Consortium:
    """Everything prepared for a run: files, protocol, keys and the nodes that will take part."""

    files: DemoFiles
    # Hospital → its EHR's consent export (CSV); empty when the nodes run under the waiver.
    consent_exports: dict[str, Path]
    protocol: StudyProtocol
    key: SecretContext
    hospitals: list[HospitalNodeSpec]

    def first_weight_unit(self) -> int:
        """Round 1's weight unit for packed updates, as a preflight would set it: from each
        hospital's rows, which bound its training rows."""
        rows = [len(spec.data_path.read_text().splitlines()) - 1 for spec in self.hospitals]
        return weight_unit_for(published_rows(count) for count in rows)

    @property
    def nodes(self) -> dict[str, NodeSettings]:
        """Each hospital's node settings, as its SuperNode reads them from --node-config."""
        return {
            spec.hospital: NodeSettings(
                hospital=spec.hospital,
                data_path=spec.data_path,
                state_dir=spec.state_dir,
                policy_path=spec.policy_path,
                dataset_id=spec.dataset_id,
                portal_url=spec.portal_url,
            )
            for spec in self.hospitals
        }


def demo_protocol(settings: DemoSettings, *, key: SecretContext) -> dict[str, Any]:
    return {
        "study_id": STUDY_ID,
        "schema": BREAST_CANCER_SCHEMA.to_dict(),
        "model": {"name": "logistic_regression", "hyperparameters": {}},
        "training": {
            "local_epochs": settings.local_epochs,
            "batch_size": 32,
            "learning_rate": 1.0,
            "seed": settings.seed,
            "holdout_fraction": 0.2,
        },
        "privacy": {
            "target_epsilon": settings.target_epsilon,
            "delta": settings.delta,
            "max_grad_norm": 1.0,
            "accountant": "rdp",
        },
        "federation": {
            "rounds": settings.rounds,
            "min_hospitals": settings.min_hospitals,
            "round_timeout_s": settings.round_timeout_s,
        },
        "encryption": {
            "scheme": "ckks",
            "params": key.params.to_dict(),
            "context_fingerprint": key.fingerprint,
        },
    }


# The demo's hospital files are synthetic, split from a public dataset: no patient to ask.
DEMO_CONSENT_WAIVER = "synthetic and public demo data: no per-patient consent applies"


def node_policy_toml(
    *, study_id: str, max_lifetime_epsilon: float, consent_waiver: str = ""
) -> str:
    """A demo node policy allowing `study_id` only; an empty `consent_waiver` makes the node use
    the portal's consent."""
    return (
        f"max_lifetime_epsilon = {max_lifetime_epsilon}\n"
        "delta = 1e-5\n"
        'accountant = "rdp"\n'
        "min_cohort_size = 50\n"
        "require_he = true\n"
        f"allowed_studies = [{json.dumps(study_id)}]\n"
        f"consent_waiver = {json.dumps(consent_waiver)}\n"
    )


def prepare_consortium(settings: DemoSettings) -> Consortium:
    """Fresh data, key and node state under `out_dir`: each demo starts with empty ledgers."""
    nodes_dir = settings.out_dir / "nodes"
    shutil.rmtree(nodes_dir, ignore_errors=True)
    files = write_breast_cancer_demo(out_dir=settings.out_dir / "data", seed=settings.seed)
    # One hospital generates the study key; in a deployment it reaches the others sealed to their
    # public keys. Here all nodes live on one machine, so the demo hands it over directly.
    key = SecretContext.generate(params=settings.he_params)
    protocol = StudyProtocol.from_dict(demo_protocol(settings, key=key))
    hospitals = []
    consent_exports: dict[str, Path] = {}
    for data_path in files.hospitals:
        name = data_path.stem
        state_dir = nodes_dir / name
        save_study_key(state_dir / "keys", study_id=STUDY_ID, context=key)
        policy_path = state_dir / "policy.toml"
        waiver = "" if settings.portal_url else DEMO_CONSENT_WAIVER
        policy_path.write_text(
            node_policy_toml(study_id=STUDY_ID, max_lifetime_epsilon=10.0, consent_waiver=waiver),
            encoding="utf-8",
        )
        if settings.portal_url:
            consent_exports[name] = write_consent_export(
                data_path=data_path,
                out_path=settings.out_dir / "consent" / f"{name}.csv",
                seed=settings.seed,
            )
        hospitals.append(
            HospitalNodeSpec(
                hospital=name,
                data_path=data_path,
                state_dir=state_dir,
                policy_path=policy_path,
                dataset_id=f"{name}/breast-cancer",
                portal_url=settings.portal_url,
            )
        )
    (settings.out_dir / "protocol.json").write_text(canonical_json(protocol.document) + "\n")
    return Consortium(
        files=files,
        consent_exports=consent_exports,
        protocol=protocol,
        key=key,
        hospitals=hospitals,
    )
