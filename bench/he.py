"""Measure 1: HE aggregation vs plaintext aggregation of the same updates.

For each model size, number of hospitals and update format (packed: quantized, four values per
slot; unpacked: one value per slot): the update's wire size over float32's, what a hospital
spends encrypting and decrypting, what the aggregator spends reading and adding the ciphertexts
next to numpy summing the same float32 updates, and how far the HE mean lies from the plaintext
mean (for packed updates, next to the quantization bound). The plaintext side exists only here,
as the baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from matplotlib.figure import Figure

from aggregator.config import weight_unit_for
from bench.core import Goal, SuiteResult, Table, Timing, time_it
from crypto import PACKED_PARAMS, CkksParams, SecretContext, max_packed_nbytes, max_update_nbytes
from crypto.codec import Update, add_updates, decrypt_weighted_mean, read_update
from hospitals.participation import UPDATE_QUANTIZATION, encrypt_model

FULL_SIZES = (10_000, 100_000, 1_000_000)
FULL_HOSPITALS = (3, 10)
FLOAT32_BYTES = 4
# From the issue: "HE update ≤ 4× float32 bytes", packed, the mean within the quantization bound.
GOAL_SIZE_RATIO = 4.0
# Weights as hospitals send them (rows); parameters as trained models have them.
ROWS_RANGE = (200, 5_000)
PARAMETER_SCALE = 0.5
# Study parameters per update format: packed (quantized, four values per slot) or unpacked.
PARAMS = {True: PACKED_PARAMS, False: CkksParams()}
FORMATS = {True: "packed", False: "unpacked"}


@dataclass(frozen=True)
class Case:
    parameters: int
    hospitals: int
    packed: bool

    @property
    def format(self) -> str:
        return FORMATS[self.packed]


@dataclass(frozen=True)
class CaseResult:
    case: Case
    update_bytes: int
    encrypt: Timing
    decrypt: Timing
    he_aggregate: Timing
    plain_aggregate: Timing
    max_abs_error: float
    error_bound: float | None  # the quantization bound, for packed updates

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
    unit = weight_unit_for(int(r) for r in rows)

    def encrypt(index: int) -> Update:
        return encrypt_model(key, models[index], rows=int(rows[index]), weight_unit=unit)

    blobs = [encrypt(index).to_bytes() for index in range(case.hospitals)]
    limit = (
        max_packed_nbytes(case.parameters)
        if case.packed
        else max_update_nbytes(key.params, length=case.parameters)
    )

    def he_aggregate() -> Update:
        # What the ServerApp does: read every hospital's bytes, then add them (which loads and
        # checks each ciphertext).
        updates = [
            read_update(
                blob,
                context=aggregator,
                expected_length=case.parameters,
                max_bytes=limit,
                check_ciphertexts=False,
            )
            for blob in blobs
        ]
        return add_updates(aggregator, updates)

    plain_blobs = [
        (model * np.float32(weight)).tobytes() for model, weight in zip(models, rows, strict=True)
    ]

    def plain_aggregate() -> npt.NDArray[np.float64]:
        # The same work in plaintext: read each hospital's float32 bytes, then add.
        arrays = np.stack([np.frombuffer(blob, dtype=np.float32) for blob in plain_blobs])
        return np.asarray(arrays.sum(axis=0, dtype=np.float64) / rows.sum(), dtype=np.float64)

    summed = he_aggregate()
    he_mean = decrypt_weighted_mean(key, summed).mean
    # The target is the rows-weighted mean; packed weights are shares of the unit, quantized.
    plain_mean = np.average(np.stack(models).astype(np.float64), axis=0, weights=rows)
    shares = [float(r) / unit for r in rows]
    return CaseResult(
        case=case,
        update_bytes=len(blobs[0]),
        encrypt=time_it(lambda: encrypt(0), repeats=repeats),
        decrypt=time_it(lambda: decrypt_weighted_mean(key, summed), repeats=repeats),
        he_aggregate=time_it(he_aggregate, repeats=repeats),
        plain_aggregate=time_it(plain_aggregate, repeats=max(repeats, 5)),
        max_abs_error=float(np.max(np.abs(he_mean - plain_mean))),
        error_bound=UPDATE_QUANTIZATION.error_bound(shares) if case.packed else None,
    )


def run(*, quick: bool) -> SuiteResult:
    sizes, hospitals = ((10_000,), (3,)) if quick else (FULL_SIZES, FULL_HOSPITALS)
    keys = {packed: SecretContext.generate(params=params) for packed, params in PARAMS.items()}
    results = [
        measure(Case(size, count, packed), key=keys[packed], repeats=1 if quick else 3)
        for size in sizes
        for count in hospitals
        for packed in PARAMS
    ]
    return SuiteResult(
        name="he",
        tables=[size_table(results), time_table(results)],
        figures={
            "params": {FORMATS[packed]: params.to_dict() for packed, params in PARAMS.items()},
            "quantization": vars(UPDATE_QUANTIZATION),
            "cases": [figures(result) for result in results],
        },
        plots={"he-aggregation.png": aggregation_plot(results)},
        goals=[size_goal(results)],
    )


def size_goal(results: list[CaseResult]) -> Goal:
    """Every packed update within GOAL_SIZE_RATIO of float32, its decrypted mean within the
    quantization bound."""
    packed = [r for r in results if r.case.packed]
    largest = max(packed, key=lambda r: r.size_ratio)
    bounded = sum(r.max_abs_error <= (r.error_bound or 0.0) for r in packed)
    return Goal(
        name="HE update size",
        target=f"≤ {GOAL_SIZE_RATIO:g}× float32 bytes, the mean within the quantization bound",
        measured=f"{largest.size_ratio:.2f}× at most (packed, {largest.case.parameters:,} "
        f"parameters); within the bound in {bounded} of {len(packed)} cases",
        met=largest.size_ratio <= GOAL_SIZE_RATIO and bounded == len(packed),
    )


def figures(result: CaseResult) -> dict[str, Any]:
    return {
        "format": result.case.format,
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
        "error_bound": result.error_bound,
    }


def size_table(results: list[CaseResult]) -> Table:
    seen = {(r.case.parameters, r.case.format): r for r in results}
    return Table(
        title=f"HE update size vs float32 (goal: ≤ {GOAL_SIZE_RATIO:g}×)",
        columns=["parameters", "format", "update bytes", "float32 bytes", "× float32"],
        rows=[
            [size, kind, r.update_bytes, size * FLOAT32_BYTES, round(r.size_ratio, 2)]
            for (size, kind), r in sorted(seen.items())
        ],
        notes=[
            "CKKS N=8192. Unpacked: one value per slot. Packed: four 15-bit values per slot, "
            "sent as seeded ciphertexts; the summed global model travels at twice that size. "
            "The size does not depend on the number of hospitals."
        ],
    )


def _seconds(timing: Timing) -> str:
    return f"{timing.median:.3g} ({timing.min:.3g}–{timing.max:.3g})"


def time_table(results: list[CaseResult]) -> Table:
    return Table(
        title="HE vs plaintext aggregation, seconds: median (min–max)",
        columns=[
            "parameters × hospitals",
            "format",
            "encrypt (1 hospital)",
            "decrypt (1 hospital)",
            "aggregate HE",
            "aggregate numpy",
            "HE / numpy",
            "max |HE − plain| mean",
            "quantization bound",
        ],
        rows=[
            [
                f"{r.case.parameters:,} × {r.case.hospitals}",
                r.case.format,
                _seconds(r.encrypt),
                _seconds(r.decrypt),
                _seconds(r.he_aggregate),
                _seconds(r.plain_aggregate),
                round(r.aggregate_ratio, 1),
                f"{r.max_abs_error:.1e}",
                "" if r.error_bound is None else f"{r.error_bound:.1e}",
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
        for packed in PARAMS:
            chosen = [
                r for r in results if (r.case.hospitals, r.case.packed) == (hospitals, packed)
            ]
            sizes = [r.case.parameters for r in chosen]
            label = f"HE {chosen[0].case.format}, {hospitals}"
            axes.plot(sizes, [r.he_aggregate.median for r in chosen], "o-", label=label)
        plain = [r for r in results if r.case.hospitals == hospitals and r.case.packed]
        axes.plot(
            [r.case.parameters for r in plain],
            [r.plain_aggregate.median for r in plain],
            "s--",
            label=f"numpy, {hospitals}",
        )
    axes.set(xscale="log", yscale="log", xlabel="parameters", ylabel="aggregation seconds")
    axes.legend(title="hospitals", fontsize="small")
    axes.grid(alpha=0.3)
    return figure
