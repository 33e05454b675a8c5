"""What every suite shares: timing with repeats, peak memory, machine facts and the result shape."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil
import torch


@dataclass(frozen=True)
class Timing:
    """Seconds of `repeats` runs after warm-up: the median, with the fastest and slowest."""

    median: float
    min: float
    max: float
    repeats: int

    def ratio_to(self, baseline: Timing) -> float:
        return self.median / baseline.median

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def time_it(action: Callable[[], object], *, repeats: int, warmup: int = 1) -> Timing:
    """Run `action` `warmup` times unmeasured, then `repeats` times measured."""
    return time_in_turns([action], repeats=repeats, warmup=warmup)[0]


def time_in_turns(
    actions: Sequence[Callable[[], object]], *, repeats: int, warmup: int = 1
) -> list[Timing]:
    """`time_it` for each of `actions`, taking turns run by run: the machine slowing down or
    speeding up meanwhile weighs on every action alike, so their ratios hold where timings taken
    one action after the other drift apart."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for _ in range(warmup):
        for action in actions:
            action()
    seconds: list[list[float]] = [[] for _ in actions]
    for _ in range(repeats):
        for action, taken in zip(actions, seconds, strict=True):
            started = time.perf_counter()
            action()
            taken.append(time.perf_counter() - started)
    return [Timing(statistics.median(taken), min(taken), max(taken), repeats) for taken in seconds]


Cell = str | int | float | None


@dataclass(frozen=True)
class Table:
    """One printed table: the figures a reader compares, side by side."""

    title: str
    columns: list[str]
    rows: list[list[Cell]]
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Goal:
    """One of the issue's goals, judged on this run's figures."""

    name: str
    target: str
    measured: str
    met: bool | None  # None: this run did not measure the goal's case

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SuiteResult:
    """A suite's tables (printed and in report.md), raw figures (results.json), plots, and the
    goals its figures judge."""

    name: str
    tables: list[Table]
    figures: dict[str, Any]
    plots: dict[str, Any] = field(default_factory=dict)  # file name → matplotlib Figure
    goals: list[Goal] = field(default_factory=list)


def machine_facts() -> dict[str, Any]:
    memory = psutil.virtual_memory()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "memory_gib": round(memory.total / 2**30, 1),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def release_freed_memory() -> None:
    """Hand the memory this process freed back to the system, where the C library allows.

    The HE suite's TenSEAL objects leave ~850 MiB of freed heap in glibc's arenas, which the
    system still counts as used: the federation suite, which sizes its cases by the available
    memory, would find that much less of it.
    """
    gc.collect()
    libc_name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(libc_name) if libc_name else None
    if libc is not None and hasattr(libc, "malloc_trim"):  # glibc only
        libc.malloc_trim(0)
