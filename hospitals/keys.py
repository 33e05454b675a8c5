"""The hospital's store of study keys: each study's CKKS secret context, for the node only."""

from __future__ import annotations

import os
import re
from pathlib import Path

from crypto import SecretContext

_SAFE_STUDY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class MissingStudyKeyError(FileNotFoundError):
    """The node holds no secret context for the study it is asked to join."""


def study_key_path(keys_dir: Path, study_id: str) -> Path:
    if not _SAFE_STUDY_ID.fullmatch(study_id):
        raise ValueError(f"study id {study_id!r} is not a safe file name (letters, digits, . _ -)")
    return keys_dir / f"{study_id}.ckks"


def save_study_key(keys_dir: Path, *, study_id: str, context: SecretContext) -> Path:
    """Write the secret context with owner-only permissions (created so, never widened later)."""
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = study_key_path(keys_dir, study_id)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as key_file:
        key_file.write(context.to_bytes())
    return path


def load_study_key(keys_dir: Path, *, study_id: str) -> SecretContext:
    path = study_key_path(keys_dir, study_id)
    if not path.exists():
        raise MissingStudyKeyError(
            f"no HE key for study '{study_id}' at {path}; import the study's sealed key first"
        )
    return SecretContext.from_bytes(path.read_bytes())
