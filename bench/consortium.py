"""The benchmarks' synthetic consortium: hospitals.synthetic's non-IID cohort, set up as the demo
sets up its hospitals (the demo's protocol, a study key per node, a waiver policy), under a study
id of the benchmark's own."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from crypto import SecretContext
from demo.setup import (
    DEMO_CONSENT_WAIVER,
    Consortium,
    DemoSettings,
    demo_protocol,
    node_policy_toml,
)
from federation.deployment import HospitalNodeSpec
from hospitals.demo_data import DemoFiles
from hospitals.keys import save_study_key
from hospitals.models import ModelSpec
from hospitals.protocol import StudyProtocol
from hospitals.synthetic import SYNTHETIC_SCHEMA, write_federation

MAX_LIFETIME_EPSILON = 10.0


@dataclass(frozen=True)
class SyntheticCohort:
    """One entry of `rows` per hospital; a common test set; hospitals.synthetic's case-mix shift
    and within-hospital spread."""

    rows: tuple[int, ...]
    test_rows: int
    shift: float = 1.0
    spread: float = 1.0


def synthetic_consortium(
    settings: DemoSettings,
    *,
    study_id: str,
    cohort: SyntheticCohort,
    model: ModelSpec | None = None,
    max_lifetime_epsilon: float = MAX_LIFETIME_EPSILON,
) -> Consortium:
    """Fresh data, key and nodes under `settings.out_dir`; `model` replaces the demo's, and each
    node's policy allows `max_lifetime_epsilon` over all the runs it takes part in."""
    data_dir = settings.out_dir / "data"
    paths = write_federation(
        out_dir=data_dir,
        n_hospitals=len(cohort.rows),
        rows_per_hospital=cohort.rows,
        seed=settings.seed,
        test_rows=cohort.test_rows,
        shift=cohort.shift,
        spread=cohort.spread,
    )
    key = SecretContext.generate(params=settings.he_params)
    document = {
        **demo_protocol(settings, key=key),
        "study_id": study_id,
        "schema": SYNTHETIC_SCHEMA.to_dict(),
    }
    if model is not None:
        document["model"] = model.to_dict()
    policy = node_policy_toml(
        study_id=study_id,
        max_lifetime_epsilon=max_lifetime_epsilon,
        consent_waiver=DEMO_CONSENT_WAIVER,
    )
    return Consortium(
        files=DemoFiles(
            hospitals=tuple(paths), test=data_dir / "test.csv", schema=data_dir / "schema.json"
        ),
        consent_exports={},
        protocol=StudyProtocol.from_dict(document),
        key=key,
        hospitals=[
            synthetic_node(
                path, out_dir=settings.out_dir, study_id=study_id, key=key, policy=policy
            )
            for path in paths
        ],
    )


def synthetic_node(
    data_path: Path, *, out_dir: Path, study_id: str, key: SecretContext, policy: str
) -> HospitalNodeSpec:
    name = data_path.stem
    state_dir = out_dir / "nodes" / name
    save_study_key(state_dir / "keys", study_id=study_id, context=key)
    policy_path = state_dir / "policy.toml"
    policy_path.write_text(policy, encoding="utf-8")
    return HospitalNodeSpec(
        hospital=name,
        data_path=data_path,
        state_dir=state_dir,
        policy_path=policy_path,
        dataset_id=f"{name}/synthetic",
    )
