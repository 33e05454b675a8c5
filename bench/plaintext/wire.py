"""The baseline's model on the wire: float32 values, raw, in the records the product uses for
ciphertexts (hospitals.wire), so the two runs differ in what HE costs only."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

DTYPE = np.float32
# The exact training rows, added to the report's training section (wire.TRAIN_SECTION): the
# mean's weight, which HE keeps hidden.
ROWS = "train.rows"


def to_bytes(values: npt.NDArray[np.floating[Any]]) -> bytes:
    return values.astype(DTYPE).tobytes()


def from_bytes(blob: bytes) -> npt.NDArray[np.float32]:
    return np.frombuffer(blob, dtype=DTYPE)
