"""The node policy: floors the hospital sets in a TOML file it controls; no study overrides them."""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from hospitals.dp import Accountant


class PolicyError(ValueError):
    """The node policy is missing or invalid; the message names the file and the key."""


def _positive_finite_number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PolicyError(f"must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise PolicyError(f"must be a positive finite number, got {value!r}")
    return float(value)


def _delta(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise PolicyError(f"must be a number in (0, 1), got {value!r}")
    return float(value)


def _accountant(value: object) -> Accountant:
    known = ", ".join(repr(accountant.value) for accountant in Accountant)
    if not isinstance(value, str) or value not in {accountant.value for accountant in Accountant}:
        raise PolicyError(f"must be one of {known}, got {value!r}")
    return Accountant(value)


def _positive_integer(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PolicyError(f"must be a positive integer, got {value!r}")
    return value


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise PolicyError(f"must be true or false, got {value!r}")
    return value


def _study_ids(value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(
        isinstance(study_id, str) and study_id.strip() for study_id in value
    ):
        raise PolicyError(f"must be a list of non-empty study ids, got {value!r}")
    return tuple(value)


MAX_WAIVER_LENGTH = 500


def _waiver(value: object) -> str:
    if not isinstance(value, str):
        raise PolicyError(f"must be text (empty for none), got {value!r}")
    text = " ".join(value.split())
    if len(text) > MAX_WAIVER_LENGTH:
        raise PolicyError(
            f"is {len(text)} characters; cite the ethics board's decision in at most "
            f"{MAX_WAIVER_LENGTH} (it is published with every round)"
        )
    return text


# One parser per key, shared by the dataclass and the file loader so both enforce the same ranges.
_PARSERS: dict[str, Callable[[object], object]] = {
    "max_lifetime_epsilon": _positive_finite_number,
    "delta": _delta,
    "accountant": _accountant,
    "min_cohort_size": _positive_integer,
    "require_he": _boolean,
    "allowed_studies": _study_ids,
    "consent_waiver": _waiver,
}


@dataclass(frozen=True)
class NodePolicy:
    max_lifetime_epsilon: float = 10.0  # per dataset, across all studies and runs
    delta: float = 1e-5  # δ at which the lifetime cap is accounted
    accountant: Accountant = Accountant.RDP
    min_cohort_size: int = 50  # refuse rounds with fewer usable rows
    require_he: bool = True  # refuse studies whose updates are not homomorphically encrypted
    allowed_studies: tuple[str, ...] = ()  # empty: any study; otherwise only these study ids
    # Empty: every round uses only rows with current consent (the study's snapshot from the
    # portal). Otherwise the ethics board's waiver of individual consent for this node's data.
    consent_waiver: str = ""

    def __post_init__(self) -> None:
        for field in fields(self):
            try:
                parsed = _PARSERS[field.name](getattr(self, field.name))
            except PolicyError as error:
                raise PolicyError(f"node policy: '{field.name}' {error}") from None
            object.__setattr__(self, field.name, parsed)

    def allows_study(self, study_id: str) -> bool:
        return not self.allowed_studies or study_id in self.allowed_studies


def load_policy(path: Path) -> NodePolicy:
    """Reads the node policy at `path`; keys left out take `NodePolicy`'s defaults."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(
            f"node policy not found: looked for {path}; write one there (see POLICY_TEMPLATE in "
            "hospitals.policy) to say what this node allows"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise PolicyError(f"{path}: node policy could not be read: {error}") from error
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise PolicyError(f"{path}: node policy is not valid TOML: {error}") from error
    # Any: each value has just been parsed by its key's parser, which NodePolicy checks again.
    values: dict[str, Any] = {}
    for key, raw in document.items():
        parser = _PARSERS.get(key)
        if parser is None:
            raise PolicyError(
                f"{path}: unknown key '{key}' in node policy (known keys: {', '.join(_PARSERS)})"
            )
        try:
            values[key] = parser(raw)
        except PolicyError as error:
            raise PolicyError(f"{path}: key '{key}' {error}") from None
    return NodePolicy(**values)


POLICY_TEMPLATE = """\
# Cohort node policy: limits this hospital enforces on every study, whatever the study asks.
# Keys left out take the defaults shown here.

# Lifetime privacy budget of each local dataset, across all studies and runs: a round that would
# take the dataset's ε past this is refused. Accounted at `delta` with `accountant`.
max_lifetime_epsilon = 10.0

# δ at which the lifetime ε is accounted, in (0, 1); keep it well below 1 / (number of patients).
delta = 1e-5

# Privacy accountant for the lifetime ε: "rdp" (Rényi DP) or "prv" (PRV, tighter, slower).
accountant = "rdp"

# Refuse rounds with fewer usable (consented, valid) rows than this.
min_cohort_size = 50

# Refuse studies whose model updates are not homomorphically encrypted before they leave the node.
require_he = true

# Study ids this node takes part in; an empty list allows any study the node is invited to.
# allowed_studies = ["sepsis-2026", "readmission-2027"]
allowed_studies = []

# Patient consent. Empty (the default): before every round the node pulls the study's consent
# snapshot from the portal (portal-url in the node config) and uses only rows whose patients have
# current consent; if the snapshot cannot be had, the node refuses the round.
# Otherwise: cite the ethics board's decision that waives individual consent for this node's
# data; the node then uses all rows and publishes "waived: <this text>" with every round.
# consent_waiver = "Ethics board XY, decision 2026-041: individual consent waived (registry data)"
consent_waiver = ""
"""
