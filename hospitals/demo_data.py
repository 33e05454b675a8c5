"""The bundled demo federation: scikit-learn's Wisconsin breast cancer data split over 3 hospitals.

A stratified 20% is set aside as a common test set; the rest is split non-IID, as real hospitals
would be: different sizes (about 50/30/20%) and different label balance (hospital A mostly benign,
C mostly malignant), each hospital keeping enough of both classes to train and evaluate on.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split

from hospitals.schema import Column, ColumnType, DatasetSchema, Reference

HOSPITAL_NAMES = ("a", "b", "c")
TEST_FRACTION = 0.2
# Share of each class's (non-test) patients that goes to each hospital, in HOSPITAL_NAMES order.
# With the dataset's 37% malignant this gives sizes of about 50/30/20% and malignant rates of
# about 19%, 45% and 70%.
CLASS_SHARES: Mapping[int, tuple[float, float, float]] = {
    0: (0.64, 0.26, 0.10),  # benign
    1: (0.26, 0.36, 0.38),  # malignant
}
# The demo's consent exports: most patients consented to form version 1, a few withdrew later and
# a few were never asked (no record: not consented either).
CONSENT_SHARES = {"granted": 0.93, "withdrawn": 0.04}
CONSENT_FORM_VERSION = 1
_CONSENT_PERIOD = (date(2025, 1, 6), date(2026, 10, 30))
_RANGE_MARGIN = 0.1
_SIGNIFICANT_DIGITS = 3


@dataclass(frozen=True)
class DemoFiles:
    hospitals: tuple[Path, ...]
    test: Path
    schema: Path


def _column_name(sklearn_name: str) -> str:
    return sklearn_name.replace(" ", "_")


def _outward(value: float, *, step: float, up: bool) -> float:
    rounded = (math.ceil if up else math.floor)(value / step) * step
    # Re-round to the step's decimals to drop float noise such as 30.300000000000004.
    return round(rounded, max(0, -math.floor(math.log10(step))))


def _declared_column(name: str, values: npt.NDArray[np.float64]) -> Column:
    """A float column whose range is the public data's range widened by 10%, rounded outward,
    and whose reference is the public data's mean and sd, as a study would cite published norms."""
    low, high = float(values.min()), float(values.max())
    margin = _RANGE_MARGIN * (high - low)
    step = 10.0 ** (math.floor(math.log10(high - low)) - (_SIGNIFICANT_DIGITS - 1))
    return Column(
        name=name,
        type=ColumnType.FLOAT,
        minimum=_outward(low - margin, step=step, up=False),
        maximum=_outward(high + margin, step=step, up=True),
        reference=Reference(
            mean=_significant(float(values.mean())), sd=_significant(float(values.std()))
        ),
    )


def _significant(value: float) -> float:
    return float(f"{value:.{_SIGNIFICANT_DIGITS}g}")


def _breast_cancer_frame() -> pd.DataFrame:
    """The dataset with snake_case feature names and the label as 1 = malignant."""
    bunch = load_breast_cancer()
    frame = pd.DataFrame(
        bunch.data, columns=[_column_name(str(name)) for name in bunch.feature_names]
    )
    # sklearn codes malignant as 0; the study predicts malignancy, so it is the positive class.
    frame["malignant"] = (bunch.target == 0).astype(np.int64)
    return frame


def _schema(frame: pd.DataFrame) -> DatasetSchema:
    features = tuple(
        _declared_column(name, frame[name].to_numpy(dtype=np.float64))
        for name in frame.columns
        if name != "malignant"
    )
    return DatasetSchema(features=features, label="malignant", id_column="patient_id")


BREAST_CANCER_SCHEMA = _schema(_breast_cancer_frame())


def write_breast_cancer_demo(*, out_dir: Path, seed: int = 7) -> DemoFiles:
    """Write hospital-a/b/c.csv, test.csv and schema.json to ``out_dir``, deterministic per seed."""
    frame = _breast_cancer_frame()
    pool, test = train_test_split(
        frame, test_size=TEST_FRACTION, stratify=frame["malignant"], random_state=seed
    )
    rng = np.random.default_rng(seed)
    parts = _split_non_iid(pool, rng=rng)
    out_dir.mkdir(parents=True, exist_ok=True)
    hospital_paths = []
    for name, part in zip(HOSPITAL_NAMES, parts, strict=True):
        path = out_dir / f"hospital-{name}.csv"
        _with_ids(part, prefix=name.upper(), rng=rng).to_csv(path, index=False)
        hospital_paths.append(path)
    test_path = out_dir / "test.csv"
    _with_ids(test, prefix="T", rng=rng).to_csv(test_path, index=False)
    schema_path = out_dir / "schema.json"
    schema_path.write_text(BREAST_CANCER_SCHEMA.to_json(), encoding="utf-8")
    return DemoFiles(hospitals=tuple(hospital_paths), test=test_path, schema=schema_path)


def _split_non_iid(pool: pd.DataFrame, *, rng: np.random.Generator) -> list[pd.DataFrame]:
    """Deal each class out to the hospitals by CLASS_SHARES."""
    pieces: list[list[pd.DataFrame]] = [[] for _ in HOSPITAL_NAMES]
    for label, shares in CLASS_SHARES.items():
        members = pool[pool["malignant"] == label]
        members = members.iloc[rng.permutation(len(members))]
        bounds = np.round(np.cumsum((0.0, *shares)) * len(members)).astype(int)
        for hospital, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            pieces[hospital].append(members.iloc[start:stop])
    return [pd.concat(hospital_pieces) for hospital_pieces in pieces]


def _with_ids(part: pd.DataFrame, *, prefix: str, rng: np.random.Generator) -> pd.DataFrame:
    """Shuffle rows (so file order says nothing about the label) and number them A-0001, …"""
    shuffled = part.iloc[rng.permutation(len(part))].reset_index(drop=True)
    ids = [f"{prefix}-{number:04d}" for number in range(1, len(shuffled) + 1)]
    return pd.concat([pd.DataFrame({"patient_id": ids}), shuffled], axis=1)


def write_consent_export(*, data_path: Path, out_path: Path, seed: int = 7) -> Path:
    """A hospital's consent export for the patients in ``data_path``, as its EHR would write it:
    patient_id,status,date,form_version — deterministic per seed."""
    patient_ids = pd.read_csv(data_path, usecols=["patient_id"], dtype=str)["patient_id"]
    rng = np.random.default_rng([seed, len(patient_ids)])
    first, last = _CONSENT_PERIOD
    days = (last - first).days
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("w", newline="", encoding="utf-8") as export:
        writer = csv.writer(export)
        writer.writerow(["patient_id", "status", "date", "form_version"])
        for patient_id in patient_ids:
            draw = rng.random()
            granted_on = first + timedelta(days=int(rng.integers(0, days // 2)))
            if draw < CONSENT_SHARES["granted"]:
                writer.writerow([patient_id, "granted", granted_on, CONSENT_FORM_VERSION])
            elif draw < CONSENT_SHARES["granted"] + CONSENT_SHARES["withdrawn"]:
                withdrawn_on = granted_on + timedelta(days=int(rng.integers(1, days // 2)))
                writer.writerow([patient_id, "withdrawn", withdrawn_on, ""])
    return out_path
