"""A study's protocol as a hospital reads it: canonical JSON, hashed, checked against the catalog.

The protocol is what data stewards approve. Its SHA-256 over canonical JSON (sorted keys, no
insignificant whitespace) is the protocol hash: any change to any field changes the hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from crypto import CkksParams, CryptoError
from hospitals.dp import Accountant, DpSettings, TrainingSettings
from hospitals.models import ModelSpec, ModelSpecError
from hospitals.schema import DatasetSchema, SchemaError

SECTIONS = ("study_id", "schema", "model", "training", "privacy", "federation", "encryption")
# Pinned once the study's key exists; stewards approve everything else.
ENCRYPTION = "encryption"


class ProtocolError(ValueError):
    """The protocol is malformed; the message names the field."""


def canonical_json(document: Mapping[str, Any]) -> str:
    """The one serialization that is hashed: sorted keys, compact separators, no NaN."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True)
class Federation:
    rounds: int
    min_hospitals: int
    round_timeout_s: int


@dataclass(frozen=True)
class Encryption:
    params: CkksParams
    context_fingerprint: str


@dataclass(frozen=True)
class StudyProtocol:
    """Everything a hospital needs to take part in a study, and nothing it could execute."""

    study_id: str
    schema: DatasetSchema
    model: ModelSpec
    training: TrainingSettings
    seed: int
    holdout_fraction: float
    privacy: DpSettings
    federation: Federation
    encryption: Encryption | None
    document: Mapping[str, Any]

    @property
    def rounds(self) -> int:
        return self.federation.rounds

    @property
    def sha256(self) -> str:
        return document_sha256(self.document)

    @property
    def approval_sha256(self) -> str:
        """The hash stewards approve: the protocol without its encryption block, which is pinned
        after the study's key ceremony and checked by every node against its own key."""
        return document_sha256({k: v for k, v in self.document.items() if k != ENCRYPTION})

    @classmethod
    def from_json(cls, text: str, *, require_encryption: bool = True) -> StudyProtocol:
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            raise ProtocolError(f"protocol is not valid JSON: {error}") from error
        return cls.from_dict(document, require_encryption=require_encryption)

    @classmethod
    def from_dict(cls, document: Any, *, require_encryption: bool = True) -> StudyProtocol:
        """Validate a protocol document; a draft (before the key ceremony) has no encryption."""
        if not isinstance(document, dict):
            raise ProtocolError("protocol must be a JSON object")
        required = [s for s in SECTIONS if require_encryption or s != ENCRYPTION]
        unknown = sorted(set(document) - set(SECTIONS))
        missing = [name for name in required if name not in document]
        if unknown or missing:
            raise ProtocolError(f"protocol fields: missing {missing}, unknown {unknown}")
        try:
            return cls._parse(document)
        except (SchemaError, ModelSpecError, CryptoError) as error:
            raise ProtocolError(str(error)) from error
        except (KeyError, TypeError, ValueError) as error:
            raise ProtocolError(f"invalid protocol: {error!r}") from error

    @classmethod
    def _parse(cls, document: dict[str, Any]) -> StudyProtocol:
        training = _object(document, "training")
        privacy = _object(document, "privacy")
        federation = _object(document, "federation")
        study_id = document["study_id"]
        if not isinstance(study_id, str) or not study_id:
            raise ProtocolError("protocol field 'study_id' must be a non-empty string")
        holdout_fraction = float(training["holdout_fraction"])
        if not 0.0 < holdout_fraction < 1.0:
            raise ProtocolError("training.holdout_fraction must lie strictly between 0 and 1")
        return cls(
            study_id=study_id,
            schema=DatasetSchema.from_dict(_object(document, "schema")),
            model=ModelSpec.from_dict(_object(document, "model")),
            training=TrainingSettings(
                local_epochs=_positive_int(training, "local_epochs"),
                batch_size=_positive_int(training, "batch_size"),
                learning_rate=float(training["learning_rate"]),
            ),
            seed=int(training["seed"]),
            holdout_fraction=holdout_fraction,
            privacy=DpSettings(
                target_epsilon=float(privacy["target_epsilon"]),
                delta=float(privacy["delta"]),
                max_grad_norm=float(privacy["max_grad_norm"]),
                accountant=Accountant(privacy.get("accountant", Accountant.RDP)),
            ),
            federation=Federation(
                rounds=_positive_int(federation, "rounds"),
                min_hospitals=_positive_int(federation, "min_hospitals"),
                round_timeout_s=_positive_int(federation, "round_timeout_s"),
            ),
            encryption=_encryption(document[ENCRYPTION]) if ENCRYPTION in document else None,
            document=document,
        )


def document_sha256(document: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(document).encode()).hexdigest()


def _encryption(section: Any) -> Encryption:
    if not isinstance(section, dict):
        raise ProtocolError("protocol field 'encryption' must be an object")
    return Encryption(
        params=CkksParams.from_dict(_object(section, "params")),
        context_fingerprint=str(section["context_fingerprint"]),
    )


def _object(section: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = section.get(key)
    if not isinstance(value, dict):
        raise ProtocolError(f"protocol field '{key}' must be an object")
    return value


def _positive_int(section: Mapping[str, Any], key: str) -> int:
    value = section.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ProtocolError(f"protocol field '{key}' must be a positive integer, got {value!r}")
    return value
