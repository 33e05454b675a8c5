"""Measure 1: HE aggregation vs plaintext aggregation of the same updates.

For each model size and number of hospitals: the update's wire size over float32's, what a
hospital spends encrypting and decrypting, what the aggregator spends reading and adding the
ciphertexts next to numpy summing the same float32 updates, and how far the HE mean lies from the
plaintext mean. The plaintext side exists only here, as the baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from matplotlib.figure import Figure

from bench.core import SuiteResult, Table, Timing, time_it
from crypto import (
    CkksParams,
    EncryptedUpdate,
    SecretContext,
    decrypt_mean,
    encrypt_update,
    max_update_nbytes,
    sum_updates,
)

FULL_SIZES = (10_000, 100_000, 1_000_000)
FULL_HOSPITALS = (3, 10)
FLOAT32_BYTES = 4
# Weights as hospitals send them (rows); parameters as trained models have them.
ROWS_RANGE = (200, 5_000)
PARAMETER_SCALE = 0.5


@dataclass(frozen=True)
class Case:
    parameters: int
    hospitals: int


@dataclass(frozen=True)
class CaseResult:
    case: Case
    update_bytes: int
    encrypt: Timing
    decrypt: Timing
    he_aggregate: Timing
    plain_aggregate: Timing
    max_abs_error: float

    @property
    def size_ratio(self) -> float:
        return self.update_bytes / (self.case.parameters * FLOAT32_BYTES)

    @property
    def aggregate_ratio(self) -> float:
        return self.he_aggregate.ratio_to(self.plain_aggregate)


def hospital_updates(
    case: Case, rng: np.random.Generator
) -> tuple[list[npt.NDArray[np.float32]], npt.NDArray[np.float64]]:
    models = [
        rng.normal(0.0, PARAMETER_SCALE, case.parameters).astype(np.float32)
        for _ in range(case.hospitals)
    ]
    rows = rng.integers(*ROWS_RANGE, size=case.hospitals).astype(np.float64)
    return models, rows


def measure(case: Case, *, key: SecretContext, repeats: int) -> CaseResult:
    rng = np.random.default_rng(case.parameters + case.hospitals)
    models, rows = hospital_updates(case, rng)
    aggregator = key.aggregator_context()
    blobs = [
        encrypt_update(key, values=model, weight=weight).to_bytes()
        for model, weight in zip(models, rows, strict=True)
    ]
    limit = max_update_nbytes(key.params, length=case.parameters)

    def he_aggregate() -> EncryptedUpdate:
        # What the ServerApp does: read and check every hospital's bytes, then add.
        updates = [
            EncryptedUpdate.from_bytes(
                blob, context=aggregator, expected_length=case.parameters, max_bytes=limit
            )
            for blob in blobs
        ]
        return sum_updates(aggregator, updates)

    plain_blobs = [
        (model * np.float32(weight)).tobytes() for model, weight in zip(models, rows, strict=True)
    ]

    def plain_aggregate() -> npt.NDArray[np.float64]:
        # The same work in plaintext: read each hospital's float32 bytes, then add.
        arrays = np.stack([np.frombuffer(blob, dtype=np.float32) for blob in plain_blobs])
        return np.asarray(arrays.sum(axis=0, dtype=np.float64) / rows.sum(), dtype=np.float64)

    summed = he_aggregate()
    he_mean = decrypt_mean(key, summed).mean
    plain_mean = np.average(np.stack(models).astype(np.float64), axis=0, weights=rows)
    return CaseResult(
        case=case,
        update_bytes=len(blobs[0]),
        encrypt=time_it(
            lambda: encrypt_update(key, values=models[0], weight=rows[0]), repeats=repeats
        ),
        decrypt=time_it(lambda: decrypt_mean(key, summed), repeats=repeats),
        he_aggregate=time_it(he_aggregate, repeats=repeats),
        plain_aggregate=time_it(plain_aggregate, repeats=max(repeats, 5)),
        max_abs_error=float(np.max(np.abs(he_mean - plain_mean))),
    )


def run(*, quick: bool) -> SuiteResult:
    cases = (
        [Case(10_000, 3)]
        if quick
        else [Case(size, hospitals) for size in FULL_SIZES for hospitals in FULL_HOSPITALS]
    )
    key = SecretContext.generate(params=CkksParams())
    results = [measure(case, key=key, repeats=1 if quick else 3) for case in cases]
    return SuiteResult(
        name="he",
        tables=[size_table(results), time_table(results)],
        figures={
            "params": key.params.to_dict(),
            "cases": [figures(result) for result in results],
        },
        plots={"he-aggregation.png": aggregation_plot(results)},
    )


def figures(result: CaseResult) -> dict[str, Any]:
    return {
        "parameters": result.case.parameters,
        "hospitals": result.case.hospitals,
        "update_bytes": result.update_bytes,
        "size_ratio_to_float32": result.size_ratio,
        "encrypt_s": result.encrypt.to_dict(),
        "decrypt_s": result.decrypt.to_dict(),
        "he_aggregate_s": result.he_aggregate.to_dict(),
        "plain_aggregate_s": result.plain_aggregate.to_dict(),
        "aggregate_ratio": result.aggregate_ratio,
        "max_abs_error": result.max_abs_error,
    }


def size_table(results: list[CaseResult]) -> Table:
    seen: dict[int, CaseResult] = {r.case.parameters: r for r in results}
    return Table(
        title="HE update size vs float32 (goal: ≤ 4×)",
        columns=["parameters", "update bytes", "float32 bytes", "× float32"],
        rows=[
            [size, r.update_bytes, size * FLOAT32_BYTES, round(r.size_ratio, 2)]
            for size, r in sorted(seen.items())
        ],
        notes=["CKKS N=8192, one value per slot; the size does not depend on the hospitals."],
    )


def _seconds(timing: Timing) -> str:
    return f"{timing.median:.3g} ({timing.min:.3g}–{timing.max:.3g})"


def time_table(results: list[CaseResult]) -> Table:
    return Table(
        title="HE vs plaintext aggregation, seconds: median (min–max)",
        columns=[
            "parameters × hospitals",
            "encrypt (1 hospital)",
            "decrypt (1 hospital)",
            "aggregate HE",
            "aggregate numpy",
            "HE / numpy",
            "max |HE − plain| mean",
        ],
        rows=[
            [
                f"{r.case.parameters:,} × {r.case.hospitals}",
                _seconds(r.encrypt),
                _seconds(r.decrypt),
                _seconds(r.he_aggregate),
                _seconds(r.plain_aggregate),
                round(r.aggregate_ratio, 1),
                f"{r.max_abs_error:.1e}",
            ]
            for r in results
        ],
        notes=[
            "Aggregate = read and validate each hospital's bytes, then add (HE), or read float32 "
            "bytes and sum with numpy (plaintext), the same updates."
        ],
    )


def aggregation_plot(results: list[CaseResult]) -> Figure:
    figure = Figure(figsize=(6, 3.5))
    axes = figure.add_subplot()
    for hospitals in sorted({r.case.hospitals for r in results}):
        chosen = [r for r in results if r.case.hospitals == hospitals]
        sizes = [r.case.parameters for r in chosen]
        axes.plot(sizes, [r.he_aggregate.median for r in chosen], "o-", label=f"HE, {hospitals}")
        axes.plot(
            sizes, [r.plain_aggregate.median for r in chosen], "s--", label=f"numpy, {hospitals}"
        )
    axes.set(xscale="log", yscale="log", xlabel="parameters", ylabel="aggregation seconds")
    axes.legend(title="hospitals", fontsize="small")
    axes.grid(alpha=0.3)
    return figure
