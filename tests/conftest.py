"""Fixtures shared across the test packages."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from demo.setup import Consortium, DemoSettings, prepare_consortium


@pytest.fixture
def make_consortium(tmp_path: Path) -> Callable[..., Consortium]:
    """Three demo hospitals with data, keys, policies and fresh state under tmp_path."""

    def make(**settings: object) -> Consortium:
        return prepare_consortium(DemoSettings(out_dir=tmp_path / "study", **settings))  # type: ignore[arg-type]

    return make
