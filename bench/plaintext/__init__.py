"""The plaintext baseline of Cohort's Flower app, for `bench federation`'s HE vs plaintext rounds.

A ServerApp and ClientApp that do a study's round work as the product does (same node checks and
consented rows, catalog model, DP-SGD, evaluation, messages) but send the model as float32 in the
clear and average it here, weighted by rows, instead of encrypting and summing ciphertexts.

Unreachable from the product: `bench` is not an installed package and nothing under hospitals/,
platform/ or crypto/ imports it; Flower's processes can load these apps only when a benchmark puts
the repository on their PYTHONPATH (`loadable`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# The app's manifest (a FAB of its own, like platform/federation/app) and the folder holding bench/.
APP_DIR = Path(__file__).parent / "app"
REPOSITORY = Path(__file__).resolve().parents[2]


@contextmanager
def loadable() -> Iterator[None]:
    """Flower processes started inside (they inherit this environment) can load these apps."""
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, (str(REPOSITORY), previous)))
    try:
        yield
    finally:
        if previous is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = previous
