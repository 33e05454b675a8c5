"""The last global model a node decrypted, kept so that one ciphertext is decrypted once.

Round r's global model reaches a hospital twice: in round r's evaluate message, then in round
r + 1's train message. Decrypting it is a large part of a hospital's HE work in a round (~0.3 s
of CPU at 1M parameters), and each message is handled by a process of its own, so the parameters
are kept on the node's disk (beside the study keys that decrypt them anyway), under the hash of
the exact ciphertext bytes they came from. One model is kept: a second study running at the same
node only decrypts again. A damaged or foreign file is never trusted, only replaced.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import numpy.typing as npt

MEMO_DIR = "decrypted-global"
_SUFFIX = ".npy"


def recall_decrypted(
    state_dir: Path, global_state: bytes, *, length: int
) -> npt.NDArray[np.float64] | None:
    """The parameters `global_state` decrypted to at this node, or None if not kept."""
    path = _memo_path(state_dir, global_state)
    try:
        parameters: npt.NDArray[np.float64] = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if parameters.dtype != np.float64 or parameters.shape != (length,):
        return None
    return parameters


def keep_decrypted(
    state_dir: Path, global_state: bytes, parameters: npt.NDArray[np.float64]
) -> None:
    """Remember `parameters` as what `global_state` decrypts to, in place of any earlier model."""
    path = _memo_path(state_dir, global_state)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written whole and renamed into place: a task reading at the same time sees no half file.
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=_SUFFIX)
    try:
        with os.fdopen(descriptor, "wb") as file:
            np.save(file, np.asarray(parameters, dtype=np.float64), allow_pickle=False)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    for older in path.parent.glob(f"[!.]*{_SUFFIX}"):
        if older != path:
            with contextlib.suppress(FileNotFoundError):
                older.unlink()


def _memo_path(state_dir: Path, global_state: bytes) -> Path:
    return state_dir / MEMO_DIR / f"{hashlib.sha256(global_state).hexdigest()}{_SUFFIX}"
