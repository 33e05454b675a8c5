"""The node's memo of planned rounds: σ is searched once per node and input, not per message.

`plan_round` searches the accountant for σ (0.02 to 0.5 s with RDP, up to seconds with PRV), and
every training message of a run asks it the same question again. An in-memory cache does not
survive here: each ClientApp task is a process of its own (a fork of `cohort-launcher`, or a fresh
`flwr-clientapp`). So the answers are kept in `<state-dir>/round-plans.json`, keyed by a hash of
every input, of the Opacus version and of the search (`NOISE_SEARCH`) that computed them. A plan is
a pure function of those, so a remembered one is exactly the plan that would be computed again; a
damaged file is recomputed and replaced, never trusted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import opacus

from hospitals.dp import NOISE_SEARCH, DpSettings, PrivacyStep, TrainingSettings, plan_round

PLANS_FILE = "round-plans.json"
# Enough for every study and cohort size a node meets; the oldest plans go first.
MAX_PLANS = 256


def remembered_plan(
    state_dir: Path,
    *,
    privacy: DpSettings,
    training: TrainingSettings,
    rounds: int,
    n_rows: int,
) -> PrivacyStep:
    """`plan_round(...)`, answered from the node's memo when it was planned before."""
    path = state_dir / PLANS_FILE
    key = _plan_key(privacy=privacy, training=training, rounds=rounds, n_rows=n_rows)
    plans = _read(path)
    if (known := _step(plans.get(key))) is not None:
        return known
    step = plan_round(privacy=privacy, training=training, rounds=rounds, n_rows=n_rows)
    plans[key] = dataclasses.asdict(step)
    _write(path, dict(list(plans.items())[-MAX_PLANS:]))
    return step


def _plan_key(*, privacy: DpSettings, training: TrainingSettings, rounds: int, n_rows: int) -> str:
    document = {
        "privacy": dataclasses.asdict(privacy),
        "training": dataclasses.asdict(training),
        "rounds": rounds,
        "n_rows": n_rows,
        "opacus": opacus.__version__,
        "search": NOISE_SEARCH,
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _read(path: Path) -> dict[str, Any]:
    try:
        plans = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return plans if isinstance(plans, dict) else {}


def _step(record: object) -> PrivacyStep | None:
    if not isinstance(record, dict):
        return None
    try:
        return PrivacyStep(**record)
    except (TypeError, ValueError):
        return None


def _write(path: Path, plans: dict[str, Any]) -> None:
    # Tasks of several studies may plan at once: each writes a whole file and renames it into
    # place, so a reader sees one complete version (a lost entry is only planned again).
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{PLANS_FILE}.")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            json.dump(plans, file)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
