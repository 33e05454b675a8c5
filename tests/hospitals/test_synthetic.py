from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from hospitals.data import load_dataset
from hospitals.schema import DatasetSchema
from hospitals.synthetic import (
    SYNTHETIC_SCHEMA,
    generate_cohort,
    main,
    outcome_logits,
    write_federation,
)


def test_generation_is_deterministic_per_hospital_and_seed() -> None:
    first = generate_cohort(hospital_index=2, n_rows=200, seed=5)

    pd.testing.assert_frame_equal(first, generate_cohort(hospital_index=2, n_rows=200, seed=5))
    assert not first.equals(generate_cohort(hospital_index=2, n_rows=200, seed=6))
    assert not first.equals(generate_cohort(hospital_index=3, n_rows=200, seed=5))


def test_columns_and_ids_match_the_schema() -> None:
    cohort = generate_cohort(hospital_index=4, n_rows=3, seed=0)

    assert tuple(cohort.columns) == SYNTHETIC_SCHEMA.required_columns
    assert list(cohort["patient_id"]) == ["H4-000001", "H4-000002", "H4-000003"]


def test_values_stay_inside_the_declared_ranges_even_under_strong_shift() -> None:
    cohort = generate_cohort(hospital_index=1, n_rows=3000, seed=0, shift=4.0)

    for column in SYNTHETIC_SCHEMA.features:
        if column.minimum is not None and column.maximum is not None:
            assert cohort[column.name].between(column.minimum, column.maximum).all(), column.name
    assert set(cohort["sex"]) == {"female", "male"}
    assert set(cohort["outcome"]) == {0, 1}


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    out_dir = tmp_path_factory.mktemp("federation")
    paths = write_federation(
        out_dir=out_dir, n_hospitals=3, rows_per_hospital=[3000, 2000, 1000], seed=1, test_rows=600
    )
    return out_dir, paths


def test_written_files_load_with_the_schema(federation: tuple[Path, list[Path]]) -> None:
    out_dir, paths = federation

    assert paths == [out_dir / f"hospital-{index}.csv" for index in (1, 2, 3)]
    schema = DatasetSchema.from_json((out_dir / "schema.json").read_text(encoding="utf-8"))
    assert schema == SYNTHETIC_SCHEMA
    sizes = [len(load_dataset(path, schema)) for path in paths]
    assert sizes == [3000, 2000, 1000]
    assert len(load_dataset(out_dir / "test.csv", schema)) == 600


def test_patient_ids_are_unique_across_the_federation(
    federation: tuple[Path, list[Path]],
) -> None:
    out_dir, paths = federation
    ids = [
        patient_id
        for path in (*paths, out_dir / "test.csv")
        for patient_id in load_dataset(path, SYNTHETIC_SCHEMA).patient_ids
    ]

    assert len(ids) == len(set(ids)) == 6600


def test_hospitals_are_not_iid(federation: tuple[Path, list[Path]]) -> None:
    _, paths = federation
    cohorts = [pd.read_csv(path) for path in paths]
    prevalences = sorted(cohort["outcome"].mean() for cohort in cohorts)
    mean_ages = sorted(cohort["age"].mean() for cohort in cohorts)

    assert min(np.diff(prevalences)) > 0.03
    assert min(np.diff(mean_ages)) > 3.0


def test_no_shift_means_one_population() -> None:
    prevalences = [
        generate_cohort(hospital_index=index, n_rows=4000, seed=1, shift=0.0)["outcome"].mean()
        for index in (1, 2, 3)
    ]

    assert max(prevalences) - min(prevalences) < 0.04


def test_specialised_hospitals_each_see_a_band_of_the_population() -> None:
    def age_sd(spread: float) -> float:
        return float(
            generate_cohort(hospital_index=2, n_rows=4000, seed=1, spread=spread)["age"].std()
        )

    assert age_sd(1.0) == pytest.approx(15.0, rel=0.05)
    assert age_sd(0.3) == pytest.approx(4.5, rel=0.05)


def test_the_test_set_spans_what_no_specialised_hospital_sees_alone(tmp_path: Path) -> None:
    paths = write_federation(
        out_dir=tmp_path,
        n_hospitals=4,
        rows_per_hospital=1000,
        seed=1,
        test_rows=4000,
        shift=2.0,
        spread=0.3,
    )
    test_age_sd = pd.read_csv(tmp_path / "test.csv")["age"].std()

    assert all(pd.read_csv(path)["age"].std() < test_age_sd / 2 for path in paths)


def test_outcome_is_learnable_from_the_features(federation: tuple[Path, list[Path]]) -> None:
    out_dir, paths = federation
    train = load_dataset(paths[0], SYNTHETIC_SCHEMA)
    test = load_dataset(out_dir / "test.csv", SYNTHETIC_SCHEMA)

    model = LogisticRegression(max_iter=1000).fit(train.features, train.labels)
    auc = roc_auc_score(test.labels, model.predict_proba(test.features)[:, 1])

    assert auc > 0.7
    # The fitted model sees the same direction of effect as the documented true model.
    lactate = SYNTHETIC_SCHEMA.feature_names.index("lactate")
    systolic_bp = SYNTHETIC_SCHEMA.feature_names.index("systolic_bp")
    assert model.coef_[0, lactate] > 0 > model.coef_[0, systolic_bp]


def test_true_logits_rank_outcomes_well() -> None:
    cohort = generate_cohort(hospital_index=1, n_rows=3000, seed=2)

    assert roc_auc_score(cohort["outcome"], outcome_logits(cohort)) > 0.8


def test_test_set_is_drawn_from_every_hospital_profile(
    federation: tuple[Path, list[Path]],
) -> None:
    out_dir, paths = federation
    pooled = pd.concat([pd.read_csv(path) for path in paths])
    test = pd.read_csv(out_dir / "test.csv")

    assert test["patient_id"].str.startswith("T-").all()
    assert test["outcome"].mean() == pytest.approx(pooled["outcome"].mean(), abs=0.05)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"n_hospitals": 3, "rows_per_hospital": [10, 10]}, "lists 2 sizes for 3 hospitals"),
        ({"n_hospitals": 0, "rows_per_hospital": 10}, "n_hospitals must be at least 1"),
        ({"n_hospitals": 2, "rows_per_hospital": [10, 0]}, "at least 1 row"),
    ],
)
def test_invalid_federations_are_refused(
    tmp_path: Path, arguments: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        write_federation(out_dir=tmp_path, seed=0, test_rows=10, **arguments)  # type: ignore[arg-type]


def test_invalid_generation_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="shift must be"):
        generate_cohort(hospital_index=1, n_rows=10, seed=0, shift=-1.0)
    with pytest.raises(ValueError, match="spread must be"):
        generate_cohort(hospital_index=1, n_rows=10, seed=0, spread=0.0)
    with pytest.raises(ValueError, match="non-negative"):
        generate_cohort(hospital_index=1, n_rows=10, seed=-3)


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "out"

    status = main(["--out", str(out_dir), "--hospitals", "2", "--rows", "40,30", "--seed", "3"])

    assert status == 0
    assert sorted(path.name for path in out_dir.iterdir()) == [
        "hospital-1.csv",
        "hospital-2.csv",
        "schema.json",
        "test.csv",
    ]
    assert len(load_dataset(out_dir / "hospital-2.csv", SYNTHETIC_SCHEMA)) == 30
    assert str(out_dir / "hospital-1.csv") in capsys.readouterr().out


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--rows", "40,30,20"], "lists 3 sizes for 2 hospitals"),
        (["--rows", "40", "--spread", "0"], "spread must be a finite number > 0"),
    ],
)
def test_command_line_reports_bad_arguments_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    out_dir = tmp_path / "out"

    with pytest.raises(SystemExit) as caught:
        main(["--out", str(out_dir), "--hospitals", "2", "--seed", "3", *arguments])

    assert caught.value.code == 2
    assert message in capsys.readouterr().err
    assert not out_dir.exists()
