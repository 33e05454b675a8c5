from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hospitals.data import DataError, LocalDataset, holdout_score, load_dataset, split_holdout
from hospitals.schema import Column, ColumnType, DatasetSchema, MissingPolicy, Reference

HEADER = "pid,age,weight,smoker,sex,died"


def make_schema(missing: MissingPolicy = MissingPolicy.ERROR) -> DatasetSchema:
    return DatasetSchema(
        features=(
            Column(name="age", type=ColumnType.INT, minimum=0, maximum=120),
            Column(name="weight", type=ColumnType.FLOAT, minimum=20, maximum=220),
            Column(name="smoker", type=ColumnType.BOOL),
            Column(name="sex", type=ColumnType.CATEGORY, categories=("female", "male")),
        ),
        label="died",
        id_column="pid",
        missing=missing,
    )


def write_csv(tmp_path: Path, *rows: str, header: str = HEADER, name: str = "site.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join((header, *rows)) + "\n", encoding="utf-8")
    return path


GOOD_ROWS = ("p1,60,120,yes,female,1", "p2,30,70,No,male,0", "p3,90,45.5,TRUE,male,false")


def test_csv_is_parsed_scaled_and_one_hot_encoded(tmp_path: Path) -> None:
    path = write_csv(tmp_path, *GOOD_ROWS)

    dataset = load_dataset(path, make_schema())

    assert dataset.patient_ids == ("p1", "p2", "p3")
    assert dataset.source == str(path)
    assert dataset.features.dtype == np.float32
    assert dataset.labels.dtype == np.float32
    np.testing.assert_allclose(
        dataset.features,
        [
            [0.0, 0.0, 1.0, 1.0, 0.0],
            [-0.5, -0.5, 0.0, 0.0, 1.0],
            [0.5, -0.745, 1.0, 0.0, 1.0],
        ],
        rtol=1e-6,
    )
    np.testing.assert_array_equal(dataset.labels, [1.0, 0.0, 0.0])
    assert len(dataset) == 3
    assert dataset.positive_rate == pytest.approx(1 / 3)


def test_a_declared_reference_scales_to_z_scores_and_the_range_still_checks(
    tmp_path: Path,
) -> None:
    weight = Column(
        name="weight", type=ColumnType.FLOAT, minimum=20, maximum=220, reference=Reference(80, 20)
    )
    schema = replace(make_schema(), features=(make_schema().features[0], weight))
    header = "pid,age,weight,died"

    dataset = load_dataset(write_csv(tmp_path, "p1,60,120,1", "p2,30,70,0", header=header), schema)
    np.testing.assert_allclose(dataset.features[:, 1], [2.0, -0.5])

    with pytest.raises(DataError, match="outside the declared range"):
        load_dataset(write_csv(tmp_path, "p3,60,230,1", header=header, name="heavy.csv"), schema)


def test_extra_columns_whitespace_and_excel_bom_are_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_text(
        "\ufeffnotes, pid ,age,weight,smoker,sex,died\nfine, p1 , 60 ,120,1, female ,1\n",
        encoding="utf-8",
    )

    dataset = load_dataset(path, make_schema())

    assert dataset.patient_ids == ("p1",)
    np.testing.assert_allclose(dataset.features, [[0.0, 0.0, 1.0, 1.0, 0.0]])


def test_parquet_loads_the_same_as_csv(tmp_path: Path) -> None:
    csv_dataset = load_dataset(write_csv(tmp_path, *GOOD_ROWS), make_schema())
    frame = pd.DataFrame(
        {
            "pid": ["p1", "p2", "p3"],
            "age": [60, 30, 90],
            "weight": [120.0, 70.0, 45.5],
            "smoker": [True, False, True],
            "sex": ["female", "male", "male"],
            # A float label column (as pandas writes one that once held NaN) still reads as 0/1.
            "died": [1.0, 0.0, 0.0],
        }
    )
    path = tmp_path / "site.parquet"
    frame.to_parquet(path)

    parquet_dataset = load_dataset(path, make_schema())

    assert parquet_dataset.patient_ids == csv_dataset.patient_ids
    np.testing.assert_array_equal(parquet_dataset.features, csv_dataset.features)
    np.testing.assert_array_equal(parquet_dataset.labels, csv_dataset.labels)


def test_parquet_nulls_are_missing_values(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "pid": ["p1", "p2"],
            "age": [60.0, None],
            "weight": [120.0, 70.0],
            "smoker": [True, False],
            "sex": ["female", "male"],
            "died": [1, 0],
        }
    )
    path = tmp_path / "site.parquet"
    frame.to_parquet(path)

    with pytest.raises(DataError) as caught:
        load_dataset(path, make_schema())

    assert (caught.value.row, caught.value.column) == (2, "age")
    assert "missing" in str(caught.value)


BAD_CELLS = {
    "not a number": ("p2,abc,70,no,male,0", "age", "value 'abc' is not a number"),
    "not a whole number": ("p2,30.5,70,no,male,0", "age", "'30.5' is not a whole number"),
    "above range": ("p2,130,70,no,male,0", "age", "'130' is outside the declared range [0, 120]"),
    "below range": ("p2,30,19.9,no,male,0", "weight", "outside the declared range [20, 220]"),
    "infinite": ("p2,30,inf,no,male,0", "weight", "outside the declared range"),
    # Not a missing token, and Arrow's column cast reads it as NaN: still not a number.
    "signed NaN": ("p2,-nan,70,no,male,0", "age", "value '-nan' is not a number"),
    "unknown category": ("p2,30,70,no,Male,0", "sex", "'Male' is not one of the declared"),
    "bad bool": ("p2,30,70,maybe,male,0", "smoker", "'maybe' is not a yes/no value"),
    "non-binary label": ("p2,30,70,no,male,2", "died", "label '2' is not binary"),
    "missing value": ("p2,,70,no,male,0", "age", "missing-value policy is 'error'"),
    "NA is missing": ("p2,30,70,NA,male,0", "smoker", "the cell holds 'NA'"),
    "missing label": ("p2,30,70,no,male,", "died", "the label is missing"),
    "missing id": (",30,70,no,male,0", "pid", "the patient id is empty"),
    "duplicate id": ("p1,30,70,no,male,0", "pid", "'p1' appears in rows 1 and 2"),
}


@pytest.mark.parametrize(("row", "column", "message"), BAD_CELLS.values(), ids=BAD_CELLS.keys())
def test_bad_cells_name_row_and_column(tmp_path: Path, row: str, column: str, message: str) -> None:
    path = write_csv(tmp_path, GOOD_ROWS[0], row, GOOD_ROWS[2])

    with pytest.raises(DataError) as caught:
        load_dataset(path, make_schema())

    error = caught.value
    assert (error.path, error.row, error.column) == (str(path), 2, column)
    assert str(error).startswith(f"{path}, row 2, column '{column}': ")
    assert message in str(error)
    assert "header not counted" in str(error)


def test_the_topmost_bad_cell_is_reported_with_a_count_of_the_others(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path,
        "p1,60,120,yes,female,1",
        "p2,30,70,no,robot,0",
        "p3,abc,70,no,male,0",
        "p4,xyz,70,no,male,0",
    )

    with pytest.raises(DataError) as caught:
        load_dataset(path, make_schema())

    assert (caught.value.row, caught.value.column) == (2, "sex")
    assert "2 other cell(s)" in str(caught.value)


def test_row_numbers_count_blank_lines_like_the_file_does(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "p1,60,120,yes,female,1", "", "p3,abc,70,no,male,0")

    with pytest.raises(DataError) as caught:
        load_dataset(path, make_schema())

    assert caught.value.row == 3


def test_blank_lines_are_not_patients(tmp_path: Path) -> None:
    path = write_csv(tmp_path, GOOD_ROWS[0], "", ",,,,,", GOOD_ROWS[1])

    assert load_dataset(path, make_schema()).patient_ids == ("p1", "p2")


def test_missing_columns_are_listed_with_what_the_schema_needs(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "p1,60,female,1", header="pid,age,sex,died")

    with pytest.raises(DataError) as caught:
        load_dataset(path, make_schema())

    message = str(caught.value)
    assert "missing column(s) 'weight', 'smoker'" in message
    assert "needs: pid, age, weight, smoker, sex, died" in message
    assert caught.value.row is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "the file is empty"),
        (HEADER + "\n", "no data rows"),
        (HEADER + "\n" + GOOD_ROWS[0] + ",extra\n", "not a well-formed CSV"),
        (HEADER + ",age\n" + GOOD_ROWS[0] + ",61\n", "'age' appear more than once"),
    ],
    ids=["empty", "header only", "too many fields", "repeated column"],
)
def test_malformed_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "site.csv"
    path.write_text(content, encoding="utf-8")

    with pytest.raises(DataError, match=message):
        load_dataset(path, make_schema())


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "site.csv"
    path.write_bytes((HEADER + "\np1,60,120,yes,f\xe9male,1\n").encode("latin-1"))

    with pytest.raises(DataError, match="not UTF-8"):
        load_dataset(path, make_schema())


def test_missing_file_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        load_dataset(tmp_path / "absent.csv", make_schema())
    with pytest.raises(DataError, match=r"unsupported file type '\.xlsx'.*\.csv or \.parquet"):
        load_dataset(tmp_path / "site.xlsx", make_schema())


def test_corrupt_parquet(tmp_path: Path) -> None:
    path = tmp_path / "site.parquet"
    path.write_bytes(b"not parquet at all")

    with pytest.raises(DataError, match="could not read the Parquet file"):
        load_dataset(path, make_schema())


MISSING_ROWS = (
    "p1,60,120,yes,female,1",
    "p2,,70,no,male,0",
    "p3,90,,NULL,,0",
    "p4,30,40,no,male,1",
)


def test_drop_row_policy_drops_rows_with_any_missing_value(tmp_path: Path) -> None:
    path = write_csv(tmp_path, *MISSING_ROWS, "p5,30,40,no,male,")

    dataset = load_dataset(path, make_schema(MissingPolicy.DROP_ROW))

    assert dataset.patient_ids == ("p1", "p4")
    np.testing.assert_array_equal(dataset.labels, [1.0, 1.0])


def test_drop_row_policy_refuses_to_drop_everything(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "p1,,120,yes,female,1", "p2,30,70,no,male,")

    with pytest.raises(DataError, match="leaves nothing to train on"):
        load_dataset(path, make_schema(MissingPolicy.DROP_ROW))


def test_impute_mean_policy_uses_local_means_of_encoded_values(tmp_path: Path) -> None:
    path = write_csv(tmp_path, *MISSING_ROWS)

    dataset = load_dataset(path, make_schema(MissingPolicy.IMPUTE_MEAN))

    assert dataset.patient_ids == ("p1", "p2", "p3", "p4")
    # Numeric values map [minimum, maximum] onto [-1, 1].
    age_mean = 2 * (60 + 90 + 30) / 3 / 120 - 1
    weight_mean = 2 * (100 + 50 + 20) / 3 / 200 - 1  # offsets from the declared minimum of 20
    np.testing.assert_allclose(dataset.features[1, 0], age_mean, rtol=1e-6)
    np.testing.assert_allclose(
        dataset.features[2], [0.5, weight_mean, 1 / 3, 1 / 3, 2 / 3], rtol=1e-6, atol=1e-7
    )
    assert not np.isnan(dataset.features).any()


def test_impute_mean_never_invents_a_label(tmp_path: Path) -> None:
    path = write_csv(tmp_path, GOOD_ROWS[0], "p2,30,70,no,male,")

    with pytest.raises(DataError) as caught:
        load_dataset(path, make_schema(MissingPolicy.IMPUTE_MEAN))

    assert (caught.value.row, caught.value.column) == (2, "died")
    assert "policy is 'impute-mean'; a label is never imputed" in str(caught.value)


def test_impute_mean_needs_at_least_one_value(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "p1,60,,yes,female,1", "p2,30,,no,male,0")

    with pytest.raises(DataError) as caught:
        load_dataset(path, make_schema(MissingPolicy.IMPUTE_MEAN))

    assert caught.value.column == "weight"
    assert "no mean to fill in" in str(caught.value)


def test_a_declared_category_spelled_like_a_missing_token_is_a_value(tmp_path: Path) -> None:
    schema = DatasetSchema(
        features=(Column(name="region", type=ColumnType.CATEGORY, categories=("EU", "NA")),),
        label="died",
        id_column="pid",
    )
    path = write_csv(tmp_path, "p1,NA,0", "p2,EU,1", header="pid,region,died")

    np.testing.assert_array_equal(load_dataset(path, schema).features, [[0, 1], [1, 0]])


def dataset_of(n_rows: int, *, prefix: str = "patient") -> LocalDataset:
    rng = np.random.default_rng(0)
    return LocalDataset(
        patient_ids=tuple(f"{prefix}-{index}" for index in range(n_rows)),
        features=rng.random((n_rows, 3), dtype=np.float32),
        labels=(rng.random(n_rows) < 0.3).astype(np.float32),
        source="memory.csv",
    )


def test_split_follows_the_salted_hash_rule() -> None:
    dataset = dataset_of(2000)

    train, holdout = split_holdout(dataset, fraction=0.2, salt="study-7")

    expected = {pid for pid in dataset.patient_ids if holdout_score(pid, salt="study-7") < 0.2}
    assert set(holdout.patient_ids) == expected
    assert set(train.patient_ids) == set(dataset.patient_ids) - expected
    assert len(holdout) / len(dataset) == pytest.approx(0.2, abs=0.03)


def test_split_is_deterministic_and_salt_dependent() -> None:
    dataset = dataset_of(300)

    first = split_holdout(dataset, fraction=0.3, salt="a")[1].patient_ids
    again = split_holdout(dataset, fraction=0.3, salt="a")[1].patient_ids
    other_salt = split_holdout(dataset, fraction=0.3, salt="b")[1].patient_ids

    assert first == again
    assert first != other_salt


def test_split_keeps_rows_aligned() -> None:
    dataset = dataset_of(50)

    train, holdout = split_holdout(dataset, fraction=0.5, salt="s")

    for part in (train, holdout):
        for position, pid in enumerate(part.patient_ids):
            original = dataset.patient_ids.index(pid)
            np.testing.assert_array_equal(part.features[position], dataset.features[original])
            assert part.labels[position] == dataset.labels[original]


@settings(max_examples=30, deadline=None)
@given(
    removed=st.lists(st.booleans(), min_size=60, max_size=60),
    fraction=st.floats(min_value=0.05, max_value=0.95),
    salt=st.text(max_size=8),
)
def test_removing_rows_never_moves_another_row(
    removed: list[bool], fraction: float, salt: str
) -> None:
    dataset = dataset_of(60)
    keep = ~np.array(removed)
    remaining = dataset.subset(keep)
    try:
        _, holdout_before = split_holdout(dataset, fraction=fraction, salt=salt)
        _, holdout_after = split_holdout(remaining, fraction=fraction, salt=salt)
    except DataError:
        # At a fraction near 0 or 1 even 60 rows can all fall on one side (0.95**60 ≈ 5%):
        # with no split, nothing can have moved.
        return

    assert set(holdout_after.patient_ids) == set(holdout_before.patient_ids) & set(
        remaining.patient_ids
    )


def test_split_refuses_an_empty_part() -> None:
    with pytest.raises(DataError, match="too small") as caught:
        split_holdout(dataset_of(1), fraction=0.5, salt="s")

    assert caught.value.path == "memory.csv"


def test_split_fraction_must_be_a_proper_fraction() -> None:
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        split_holdout(dataset_of(10), fraction=1.0, salt="s")


def test_subset_validates_the_mask() -> None:
    with pytest.raises(ValueError, match=r"boolean array of shape \(4,\)"):
        dataset_of(4).subset(np.array([1, 0, 1, 0]))


def test_positive_rate_of_an_empty_dataset_is_an_error() -> None:
    empty = dataset_of(3).subset(np.zeros(3, dtype=bool))

    assert len(empty) == 0
    with pytest.raises(ValueError, match="empty dataset"):
        _ = empty.positive_rate
