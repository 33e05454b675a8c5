"""The aggregator's reading of a run's configuration (Flower's run config)."""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crypto import AggregatorContext, CryptoError

DEFAULT_MAX_UPDATE_MIB = 512
# A round's weight unit leaves room above the largest published cohort: for consents granted
# between rounds, and for the rounding of published counts (to 10 rows).
WEIGHT_UNIT_MARGIN = 1.25
WEIGHT_UNIT_MIN_ROWS = 10


class ConfigError(ValueError):
    """The run configuration cannot drive a study; the message says which key and why."""


@dataclass(frozen=True)
class AggregatorConfig:
    """What the round loop needs, validated before the first message goes out."""

    protocol_json: str
    study_id: str
    rounds: int
    min_hospitals: int
    round_timeout_s: float
    join_timeout_s: float
    he_context: AggregatorContext
    results_path: Path | None
    max_update_bytes: int
    results_url: str = ""
    results_token: str = ""
    # Round 1's weight unit for packed updates (later rounds derive theirs); None: equal weights.
    weight_unit: int | None = None

    @property
    def reports_to_portal(self) -> bool:
        return bool(self.results_url and self.results_token)

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> AggregatorConfig:
        protocol_json = _required_str(run_config, "protocol")
        protocol = _parse_protocol(protocol_json)
        federation = _section(protocol, "federation")
        he_context = _he_context(_required_str(run_config, "he-context"))
        pinned = _section(protocol, "encryption").get("context_fingerprint")
        if pinned != he_context.fingerprint:
            raise ConfigError(
                f"run config 'he-context' has fingerprint {he_context.fingerprint}, "
                "but the protocol "
                f"pins {pinned!r}: the aggregator was given another study's context"
            )
        results_url = _optional_str(run_config, "results-url")
        results_token = _optional_str(run_config, "results-token")
        if bool(results_url) != bool(results_token):
            raise ConfigError(
                "run config 'results-url' and 'results-token' go together: set both to report to "
                "the portal, or neither to write 'results-path'"
            )
        if results_url and not results_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"run config 'results-url' must be an http(s) URL, got {results_url!r}"
            )
        results_path = (
            _optional_str(run_config, "results-path")
            if results_url
            else _required_str(run_config, "results-path")
        )
        return cls(
            protocol_json=protocol_json,
            study_id=_str_field(protocol, "study_id"),
            rounds=_positive_int(federation, "rounds"),
            min_hospitals=_positive_int(federation, "min_hospitals"),
            round_timeout_s=float(_positive_int(federation, "round_timeout_s")),
            join_timeout_s=float(run_config.get("join-timeout-s", 120)),
            he_context=he_context,
            results_path=Path(results_path) if results_path else None,
            max_update_bytes=int(run_config.get("max-update-mib", DEFAULT_MAX_UPDATE_MIB)) << 20,
            results_url=results_url,
            results_token=results_token,
            weight_unit=_weight_unit(run_config),
        )


def weight_unit_for(published_rows: Iterable[int]) -> int:
    """The rows that weigh 1 in the next round's packed updates: a public bound just above the
    largest cohort, so that every hospital's share (rows / unit) stays at most 1 and large."""
    return max(WEIGHT_UNIT_MIN_ROWS, math.ceil(max(published_rows) * WEIGHT_UNIT_MARGIN))


def _weight_unit(run_config: Mapping[str, Any]) -> int | None:
    value = run_config.get("weight-unit", 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"run config 'weight-unit' must be a row count (0: none), got {value!r}")
    return value or None


def _required_str(run_config: Mapping[str, Any], key: str) -> str:
    value = run_config.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"run config '{key}' is missing or empty")
    return value


def _optional_str(run_config: Mapping[str, Any], key: str) -> str:
    value = run_config.get(key, "")
    if not isinstance(value, str):
        raise ConfigError(f"run config '{key}' must be a string, got {value!r}")
    return value


def _parse_protocol(protocol_json: str) -> dict[str, Any]:
    try:
        protocol = json.loads(protocol_json)
    except json.JSONDecodeError as error:
        raise ConfigError(f"run config 'protocol' is not valid JSON: {error}") from error
    if not isinstance(protocol, dict):
        raise ConfigError("run config 'protocol' must be a JSON object")
    return protocol


def _section(protocol: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    section = protocol.get(name)
    if not isinstance(section, dict):
        raise ConfigError(f"protocol section '{name}' is missing or not an object")
    return section


def _str_field(section: Mapping[str, Any], key: str) -> str:
    value = section.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"protocol field '{key}' must be a non-empty string")
    return value


def _positive_int(section: Mapping[str, Any], key: str) -> int:
    value = section.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"protocol field '{key}' must be a positive integer, got {value!r}")
    return value


def _he_context(encoded: str) -> AggregatorContext:
    try:
        return AggregatorContext.from_bytes(base64.b64decode(encoded, validate=True))
    except binascii.Error as error:
        raise ConfigError(f"run config 'he-context' is not base64: {error}") from error
    except CryptoError as error:
        raise ConfigError(
            f"run config 'he-context' is not a usable aggregator context: {error}"
        ) from error
