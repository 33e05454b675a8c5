from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer

from hospitals.data import LocalDataset, load_dataset
from hospitals.demo_data import BREAST_CANCER_SCHEMA, DemoFiles, write_breast_cancer_demo
from hospitals.schema import ColumnType, DatasetSchema

N_PATIENTS = 569  # the size of the public dataset


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoFiles:
    return write_breast_cancer_demo(out_dir=tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def datasets(demo: DemoFiles) -> dict[str, LocalDataset]:
    loaded = {path.stem: load_dataset(path, BREAST_CANCER_SCHEMA) for path in demo.hospitals}
    loaded["test"] = load_dataset(demo.test, BREAST_CANCER_SCHEMA)
    return loaded


def test_schema_declares_thirty_float_features_around_the_public_ranges() -> None:
    data = load_breast_cancer().data

    assert BREAST_CANCER_SCHEMA.n_features == 30
    assert BREAST_CANCER_SCHEMA.label == "malignant"
    assert BREAST_CANCER_SCHEMA.id_column == "patient_id"
    assert BREAST_CANCER_SCHEMA.features[0].name == "mean_radius"
    for index, column in enumerate(BREAST_CANCER_SCHEMA.features):
        assert column.type is ColumnType.FLOAT
        assert column.minimum is not None and column.maximum is not None
        low, high = data[:, index].min(), data[:, index].max()
        margin = 0.1 * (high - low)
        assert column.minimum <= low - margin < low
        assert column.maximum >= high + margin > high
        # Widened by about 10%, not more: rounding only moves each bound by a little.
        assert column.maximum - column.minimum < 1.25 * (high - low)


def test_files_are_written_and_the_schema_file_matches(demo: DemoFiles) -> None:
    assert [path.name for path in demo.hospitals] == [
        "hospital-a.csv",
        "hospital-b.csv",
        "hospital-c.csv",
    ]
    assert demo.test.name == "test.csv"
    schema = DatasetSchema.from_json(demo.schema.read_text(encoding="utf-8"))
    assert schema == BREAST_CANCER_SCHEMA


def test_every_patient_is_used_once(datasets: dict[str, LocalDataset]) -> None:
    assert sum(len(dataset) for dataset in datasets.values()) == N_PATIENTS
    ids = [patient_id for dataset in datasets.values() for patient_id in dataset.patient_ids]
    assert len(set(ids)) == N_PATIENTS
    assert datasets["hospital-a"].patient_ids[:2] == ("A-0001", "A-0002")
    assert datasets["test"].patient_ids[0] == "T-0001"


def test_test_set_is_a_stratified_fifth(datasets: dict[str, LocalDataset]) -> None:
    test = datasets["test"]
    overall_rate = (load_breast_cancer().target == 0).mean()

    assert len(test) == pytest.approx(0.2 * N_PATIENTS, abs=1)
    assert test.positive_rate == pytest.approx(overall_rate, abs=0.01)


def test_test_rows_are_disjoint_from_hospital_rows(demo: DemoFiles) -> None:
    def rows(path: Path) -> set[tuple[float, ...]]:
        frame = pd.read_csv(path).drop(columns="patient_id")
        return set(frame.itertuples(index=False, name=None))

    test_rows = rows(demo.test)
    for path in demo.hospitals:
        assert not test_rows & rows(path), path.name


def test_hospitals_differ_in_size_and_label_balance(datasets: dict[str, LocalDataset]) -> None:
    hospitals = [datasets[f"hospital-{name}"] for name in "abc"]
    pool = sum(len(hospital) for hospital in hospitals)
    shares = [len(hospital) / pool for hospital in hospitals]
    malignant_rates = [hospital.positive_rate for hospital in hospitals]

    np.testing.assert_allclose(shares, [0.5, 0.3, 0.2], atol=0.05)
    assert malignant_rates[0] < 0.3 < malignant_rates[1] < 0.6 < malignant_rates[2]
    for hospital in hospitals:
        positives = int(hospital.labels.sum())
        assert positives >= 10 and len(hospital) - positives >= 10, hospital.source


def test_labels_mean_malignant(demo: DemoFiles) -> None:
    bunch = load_breast_cancer()
    malignant_by_row = {
        tuple(np.round(row, 6)): target == 0
        for row, target in zip(bunch.data, bunch.target, strict=True)
    }
    frame = pd.read_csv(demo.hospitals[2])
    features = frame.drop(columns=["patient_id", "malignant"]).to_numpy()

    for row, malignant in zip(features, frame["malignant"], strict=True):
        assert bool(malignant) == malignant_by_row[tuple(np.round(row, 6))]


def test_same_seed_same_files_other_seed_other_split(demo: DemoFiles, tmp_path: Path) -> None:
    again = write_breast_cancer_demo(out_dir=tmp_path / "again")
    other = write_breast_cancer_demo(out_dir=tmp_path / "other", seed=8)

    for first, second in zip(
        (*demo.hospitals, demo.test), (*again.hospitals, again.test), strict=True
    ):
        assert first.read_bytes() == second.read_bytes()
    assert demo.test.read_bytes() != other.test.read_bytes()
