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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

MEMO_DIR = "decrypted-global"
_SUFFIX = ".npy"


@dataclass(frozen=True)
class DecryptedGlobal:
    """Where a node keeps what one global-model ciphertext decrypts to (hashed once per message)."""

    path: Path

    @classmethod
    def of(cls, state_dir: Path, global_state: bytes) -> DecryptedGlobal:
        digest = hashlib.sha256(global_state).hexdigest()
        return cls(state_dir / MEMO_DIR / f"{digest}{_SUFFIX}")

    def recall(self, *, length: int) -> npt.NDArray[np.float64] | None:
        """The parameters the ciphertext decrypted to at this node, or None if not kept."""
        try:
            parameters: npt.NDArray[np.float64] = np.load(self.path, allow_pickle=False)
        except (OSError, ValueError):
            return None
        if parameters.dtype != np.float64 or parameters.shape != (length,):
            return None
        return parameters

    def keep(self, parameters: npt.NDArray[np.float64]) -> None:
        """Remember `parameters` as what the ciphertext decrypts to, replacing any earlier model."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Written whole and renamed into place: a task reading at the same time sees no half file.
        descriptor, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".", suffix=_SUFFIX)
        try:
            with os.fdopen(descriptor, "wb") as file:
                np.save(file, np.asarray(parameters, dtype=np.float64), allow_pickle=False)
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        for older in self.path.parent.glob(f"[!.]*{_SUFFIX}"):
            if older != self.path:
                with contextlib.suppress(FileNotFoundError):
                    older.unlink()
