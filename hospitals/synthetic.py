"""Synthetic EHR-like cohorts for benchmarks and scale tests (``cohort-synthetic``).

Patients get vital signs and labs driven by a latent severity; the outcome is drawn from the known
logistic model ``OUTCOME_INTERCEPT + sum(OUTCOME_COEFFICIENTS[f] * z_f)`` over features
standardised with the fixed ``REFERENCE_STANDARDIZATION``, so a federated model's weights can be
compared with the truth. Hospitals differ in case mix (age, severity, lactate baseline), scaled by
``shift``: P(outcome | features) is the same everywhere while the feature distributions and the
prevalence differ, i.e. covariate shift, the usual non-IID setting between hospitals. ``spread``
below 1 makes hospitals specialised: each sees only a band of the population's ages and
severities (a geriatric ward, a trauma centre), so no hospital alone sees the whole range that
the consortium's patients, and its common test set, cover.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from hospitals.schema import Column, ColumnType, DatasetSchema, Reference

FloatArray = npt.NDArray[np.float64]


# The true outcome model: log-odds = intercept + sum(coefficient * z), where z is the feature
# standardised with REFERENCE_STANDARDIZATION (fixed, not per-hospital) and "male" is 0/1.
OUTCOME_INTERCEPT = -2.2
OUTCOME_COEFFICIENTS: Mapping[str, float] = {
    "age": 0.5,
    "male": 0.25,
    "heart_rate": 0.4,
    "systolic_bp": -0.5,
    "temperature": 0.2,
    "resp_rate": 0.45,
    "lactate": 0.8,
    "creatinine": 0.35,
    "wbc": 0.3,
}
# Also what SYNTHETIC_SCHEMA declares as each column's reference (mean, sd).
REFERENCE_STANDARDIZATION: Mapping[str, tuple[float, float]] = {
    "age": (60.0, 15.0),
    "heart_rate": (88.0, 16.0),
    "systolic_bp": (122.0, 20.0),
    "temperature": (37.2, 0.8),
    "resp_rate": (19.0, 5.0),
    "lactate": (1.8, 1.2),
    "creatinine": (1.1, 0.6),
    "wbc": (9.5, 4.0),
}


def _numeric(name: str, minimum: float, maximum: float, *, integer: bool = False) -> Column:
    """A vital or lab with its physiological range and, as a study would cite published norms,
    the reference population's mean and sd."""
    column_type = ColumnType.INT if integer else ColumnType.FLOAT
    mean, sd = REFERENCE_STANDARDIZATION[name]
    return Column(
        name=name,
        type=column_type,
        minimum=minimum,
        maximum=maximum,
        reference=Reference(mean=mean, sd=sd),
    )


SYNTHETIC_SCHEMA = DatasetSchema(
    features=(
        _numeric("age", 18, 100, integer=True),
        Column(name="sex", type=ColumnType.CATEGORY, categories=("female", "male")),
        _numeric("heart_rate", 30, 220, integer=True),
        _numeric("systolic_bp", 60, 250, integer=True),
        _numeric("temperature", 33, 43),
        _numeric("resp_rate", 5, 60, integer=True),
        _numeric("lactate", 0, 20),
        _numeric("creatinine", 0, 15),
        _numeric("wbc", 0, 60),
    ),
    label="outcome",
    id_column="patient_id",
)

# Decimal places each column is recorded with, as an EHR export would.
_DECIMALS: Mapping[str, int] = {
    "age": 0,
    "heart_rate": 0,
    "systolic_bp": 0,
    "temperature": 1,
    "resp_rate": 0,
    "lactate": 1,
    "creatinine": 2,
    "wbc": 1,
}

# Irrational steps spread hospitals' profiles evenly over [-1, 1) whatever their number, without
# randomness, so hospital i always has the same case mix and neighbours never coincide.
_PROFILE_STEPS = {"age": 0.6180339887498949, "lactate": 0.4142135623730951, "severity": 0.7320508}

_TRAIN_STREAM = 0
_TEST_STREAM = 1
_SHUFFLE_STREAM = 2


@dataclass(frozen=True)
class HospitalProfile:
    """How a hospital's population departs from the reference one, each in [-1, 1)."""

    age: float
    lactate: float
    severity: float

    @classmethod
    def for_hospital(cls, hospital_index: int) -> HospitalProfile:
        def position(step: float) -> float:
            return 2.0 * math.modf(hospital_index * step)[0] - 1.0

        return cls(**{name: position(step) for name, step in _PROFILE_STEPS.items()})


def generate_cohort(
    *, hospital_index: int, n_rows: int, seed: int, shift: float = 1.0, spread: float = 1.0
) -> pd.DataFrame:
    """``n_rows`` patients of hospital ``hospital_index``, deterministic for (index, seed, shift,
    spread).

    ``shift=0`` makes every hospital draw from the same population (IID); larger is more non-IID.
    ``spread`` is the within-hospital standard deviation of age and severity as a fraction of
    the reference population's: 1 (the default) lets every hospital see the whole range.
    """
    return _generate(
        hospital_index=hospital_index,
        n_rows=n_rows,
        seed=seed,
        shift=shift,
        spread=spread,
        stream=_TRAIN_STREAM,
        id_prefix=f"H{hospital_index}",
    )


def outcome_logits(cohort: pd.DataFrame) -> FloatArray:
    """The true log-odds of the outcome for each row of a generated cohort."""
    logits = np.full(len(cohort), OUTCOME_INTERCEPT)
    for name, coefficient in OUTCOME_COEFFICIENTS.items():
        if name == "male":
            logits += coefficient * (cohort["sex"] == "male").to_numpy(dtype=np.float64)
            continue
        mean, sd = REFERENCE_STANDARDIZATION[name]
        logits += coefficient * (cohort[name].to_numpy(dtype=np.float64) - mean) / sd
    return logits


def write_federation(
    *,
    out_dir: Path,
    n_hospitals: int,
    rows_per_hospital: int | Sequence[int],
    seed: int,
    test_rows: int,
    shift: float = 1.0,
    spread: float = 1.0,
) -> list[Path]:
    """Write hospital-1.csv … hospital-N.csv, test.csv and schema.json; return the hospital paths.

    test.csv is a common held-out set drawn from the mixture of hospitals in proportion to their
    sizes, with its own ids ("T-000001"), so no test patient is also a training patient.
    """
    sizes = _hospital_sizes(n_hospitals=n_hospitals, rows_per_hospital=rows_per_hospital)
    if test_rows < 1:
        raise ValueError(f"test_rows must be at least 1, got {test_rows}")
    _check_case_mix(shift=shift, spread=spread)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, size in enumerate(sizes, start=1):
        path = out_dir / f"hospital-{index}.csv"
        cohort = generate_cohort(
            hospital_index=index, n_rows=size, seed=seed, shift=shift, spread=spread
        )
        cohort.to_csv(path, index=False)
        paths.append(path)
    _test_cohort(sizes=sizes, test_rows=test_rows, seed=seed, shift=shift, spread=spread).to_csv(
        out_dir / "test.csv", index=False
    )
    (out_dir / "schema.json").write_text(SYNTHETIC_SCHEMA.to_json(), encoding="utf-8")
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cohort-synthetic",
        description="Write a synthetic federation: one CSV per hospital, test.csv and schema.json.",
    )
    parser.add_argument("--out", type=Path, required=True, help="directory to write into")
    parser.add_argument("--hospitals", type=int, required=True, help="number of hospitals")
    parser.add_argument(
        "--rows",
        type=_row_counts,
        required=True,
        help="rows per hospital: one number for all, or one per hospital (e.g. 5000,2000,800)",
    )
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--test-rows", type=int, default=1000, help="rows in test.csv")
    parser.add_argument(
        "--shift", type=float, default=1.0, help="how non-IID hospitals are (0 = IID)"
    )
    parser.add_argument(
        "--spread",
        type=float,
        default=1.0,
        help="each hospital's spread of age and severity, as a fraction of the population's "
        "(below 1 = specialised hospitals)",
    )
    args = parser.parse_args(argv)
    rows: list[int] = args.rows
    try:
        paths = write_federation(
            out_dir=args.out,
            n_hospitals=args.hospitals,
            rows_per_hospital=rows[0] if len(rows) == 1 else rows,
            seed=args.seed,
            test_rows=args.test_rows,
            shift=args.shift,
            spread=args.spread,
        )
    except ValueError as error:
        parser.error(str(error))
    for path in paths:
        print(path)
    print(args.out / "test.csv")
    print(args.out / "schema.json")
    return 0


def _row_counts(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number or comma-separated numbers, got {text!r}"
        ) from None


def _hospital_sizes(*, n_hospitals: int, rows_per_hospital: int | Sequence[int]) -> list[int]:
    if n_hospitals < 1:
        raise ValueError(f"n_hospitals must be at least 1, got {n_hospitals}")
    if isinstance(rows_per_hospital, int):
        sizes = [rows_per_hospital] * n_hospitals
    else:
        sizes = list(rows_per_hospital)
        if len(sizes) != n_hospitals:
            raise ValueError(
                f"rows_per_hospital lists {len(sizes)} sizes for {n_hospitals} hospitals; "
                "give one size per hospital or a single size for all"
            )
    if min(sizes) < 1:
        raise ValueError(f"every hospital needs at least 1 row, got sizes {sizes}")
    return sizes


def _test_cohort(
    *, sizes: Sequence[int], test_rows: int, seed: int, shift: float, spread: float
) -> pd.DataFrame:
    shares = _proportional_counts(total=test_rows, weights=sizes)
    parts = [
        _generate(
            hospital_index=index,
            n_rows=count,
            seed=seed,
            shift=shift,
            spread=spread,
            stream=_TEST_STREAM,
            id_prefix="T",
        )
        for index, count in enumerate(shares, start=1)
        if count > 0
    ]
    pooled = pd.concat(parts, ignore_index=True)
    order = np.random.default_rng([seed, 0, _SHUFFLE_STREAM]).permutation(len(pooled))
    pooled = pooled.iloc[order].reset_index(drop=True)
    pooled["patient_id"] = [f"T-{number:06d}" for number in range(1, len(pooled) + 1)]
    return pooled


def _proportional_counts(*, total: int, weights: Sequence[int]) -> list[int]:
    """Split ``total`` in proportion to ``weights`` (largest remainder), summing to ``total``."""
    exact = np.asarray(weights, dtype=np.float64) * total / sum(weights)
    counts = np.floor(exact).astype(int)
    leftover = total - int(counts.sum())
    counts[np.argsort(-(exact - counts), kind="stable")[:leftover]] += 1
    return [int(count) for count in counts]


def _generate(
    *,
    hospital_index: int,
    n_rows: int,
    seed: int,
    shift: float,
    spread: float,
    stream: int,
    id_prefix: str,
) -> pd.DataFrame:
    if hospital_index < 0 or seed < 0:
        raise ValueError(
            f"hospital_index and seed must be non-negative, got {hospital_index} and {seed}"
        )
    if n_rows < 1:
        raise ValueError(f"n_rows must be at least 1, got {n_rows}")
    _check_case_mix(shift=shift, spread=spread)
    rng = np.random.default_rng([seed, hospital_index, stream])
    profile = HospitalProfile.for_hospital(hospital_index)
    cohort = pd.DataFrame(
        {"patient_id": [f"{id_prefix}-{number:06d}" for number in range(1, n_rows + 1)]}
    )
    measurements = _measurements(rng, n_rows=n_rows, profile=profile, shift=shift, spread=spread)
    for column in SYNTHETIC_SCHEMA.features:
        if column.name == "sex":
            cohort["sex"] = np.where(rng.random(n_rows) < 0.5, "female", "male")
        else:
            cohort[column.name] = _recorded(column, measurements[column.name])
    probability = 1.0 / (1.0 + np.exp(-outcome_logits(cohort)))
    cohort[SYNTHETIC_SCHEMA.label] = (rng.random(n_rows) < probability).astype(np.int64)
    return cohort


def _check_case_mix(*, shift: float, spread: float) -> None:
    if not (math.isfinite(shift) and shift >= 0):
        raise ValueError(f"shift must be a finite number >= 0, got {shift}")
    if not (math.isfinite(spread) and spread > 0):
        raise ValueError(f"spread must be a finite number > 0, got {spread}")


def _measurements(
    rng: np.random.Generator,
    *,
    n_rows: int,
    profile: HospitalProfile,
    shift: float,
    spread: float,
) -> dict[str, FloatArray]:
    """Raw vitals and labs, correlated through a latent severity and shifted by the profile."""
    age = rng.normal(60.0 + 12.0 * shift * profile.age, 15.0 * spread, n_rows)
    severity = rng.normal(0.8 * shift * profile.severity, spread, n_rows)

    def noise(scale: float) -> FloatArray:
        return rng.normal(0.0, scale, n_rows)

    lactate_baseline = math.log(1.5) + 0.25 * shift * profile.lactate
    return {
        "age": age,
        "heart_rate": 88.0 + 12.0 * severity + noise(12.0),
        "systolic_bp": 122.0 - 12.0 * severity + noise(16.0),
        "temperature": 37.2 + 0.5 * severity + noise(0.6),
        "resp_rate": 19.0 + 4.0 * severity + noise(3.5),
        "lactate": np.exp(lactate_baseline + 0.35 * severity + noise(0.35)),
        "creatinine": np.exp(math.log(0.95) + 0.2 * severity + 0.006 * (age - 60) + noise(0.3)),
        "wbc": np.exp(math.log(9.0) + 0.25 * severity + noise(0.3)),
    }


def _recorded(column: Column, values: FloatArray) -> FloatArray | npt.NDArray[np.int64]:
    """Round as recorded and clip into the schema's declared range, so every row loads."""
    if column.minimum is None or column.maximum is None:
        raise ValueError(f"synthetic column '{column.name}' needs a declared range")
    clipped = np.clip(np.round(values, _DECIMALS[column.name]), column.minimum, column.maximum)
    if column.type is ColumnType.INT:
        return clipped.astype(np.int64)
    return clipped
