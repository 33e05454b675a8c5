"""Loading a hospital's data file against the study's schema.

Every cell is read as text and parsed here, not by pandas' type inference, so that a bad value is
reported with its row and column instead of silently becoming NaN or turning a column into strings.
A file is validated completely before a dataset is returned: training never sees a partial file.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from hospitals.schema import Column, ColumnType, DatasetSchema, MissingPolicy

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]

SUPPORTED_SUFFIXES = (".csv", ".parquet")

# Spellings exports commonly use for "no value", compared case-insensitively after stripping.
# A value that is one of a category column's declared categories is never taken as missing.
MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "null"})
_TRUE_TOKENS = frozenset({"true", "1", "yes"})
_FALSE_TOKENS = frozenset({"false", "0", "no"})
_ROW_NOTE = "rows are counted from 1 at the first data row, header not counted"


class DataError(ValueError):
    """A hospital's data file does not satisfy the study's schema.

    ``row`` is the 1-based data row as a person counts it in the file (header not counted).
    """

    def __init__(
        self, problem: str, *, path: str, row: int | None = None, column: str | None = None
    ) -> None:
        location = [path]
        if row is not None:
            location.append(f"row {row}")
        if column is not None:
            location.append(f"column '{column}'")
        message = f"{', '.join(location)}: {problem}"
        if row is not None:
            message += f" ({_ROW_NOTE})"
        super().__init__(message)
        self.problem = problem
        self.path = path
        self.row = row
        self.column = column


@dataclass(frozen=True, eq=False)
class LocalDataset:
    """A hospital's encoded rows; numeric features scaled as the schema declares (`Column.scaled`),
    categories one-hot."""

    patient_ids: tuple[str, ...]
    features: FloatArray
    labels: FloatArray
    source: str

    def __post_init__(self) -> None:
        n_rows = len(self.patient_ids)
        if self.features.ndim != 2 or self.features.shape[0] != n_rows:
            raise ValueError(
                f"features must have shape ({n_rows}, n_features), got {self.features.shape}"
            )
        if self.labels.shape != (n_rows,):
            raise ValueError(f"labels must have shape ({n_rows},), got {self.labels.shape}")
        if self.features.dtype != np.float32 or self.labels.dtype != np.float32:
            raise ValueError(
                "features and labels must be float32, got "
                f"{self.features.dtype} and {self.labels.dtype}"
            )

    def __len__(self) -> int:
        return len(self.patient_ids)

    def subset(self, mask: BoolArray) -> LocalDataset:
        """The rows where ``mask`` is true, in their original order."""
        if mask.dtype != np.bool_ or mask.shape != (len(self),):
            raise ValueError(
                f"mask must be a boolean array of shape ({len(self)},), "
                f"got {mask.dtype} with shape {mask.shape}"
            )
        return LocalDataset(
            patient_ids=tuple(
                pid for pid, keep in zip(self.patient_ids, mask, strict=True) if keep
            ),
            features=self.features[mask],
            labels=self.labels[mask],
            source=self.source,
        )

    @property
    def positive_rate(self) -> float:
        if len(self) == 0:
            raise ValueError(f"{self.source}: an empty dataset has no positive rate")
        return float(self.labels.mean())


def load_dataset(
    path: Path, schema: DatasetSchema, *, include: Callable[[str], bool] | None = None
) -> LocalDataset:
    """Read ``path`` (.csv or .parquet), check every cell against ``schema`` and encode it.

    With ``include``, only the rows whose patient id it accepts are parsed and encoded (patients
    with consent): the others' values are never read, not even into an imputed mean. Patient ids
    are checked in every row.
    """
    source = str(path)
    table = _read_table(path, source=source)
    _check_columns(table, schema=schema, source=source)
    blank = _blank_rows(table)
    table = table[~blank]
    if table.empty:
        raise DataError(
            "the file names its columns but has no data rows; export the cohort's rows into it",
            path=source,
        )
    row_numbers = table.index.to_numpy() + 1
    patient_ids = _parse_ids(
        table[schema.id_column], rows=row_numbers, schema=schema, source=source
    )
    if include is not None:
        kept = np.array([bool(include(patient_id)) for patient_id in patient_ids], dtype=np.bool_)
        if not kept.any():
            return _empty(schema, source=source)
        table, row_numbers = table[kept], row_numbers[kept]
        patient_ids = tuple(pid for pid, keep in zip(patient_ids, kept, strict=True) if keep)
    parsed = _ParsedColumns(rows=row_numbers, source=source)
    features = [
        parsed.feature(column, table[column.name], policy=schema.missing)
        for column in schema.features
    ]
    labels = parsed.label(schema.label, table[schema.label], policy=schema.missing)
    parsed.raise_first_problem()
    return _assemble(
        patient_ids=patient_ids,
        features=features,
        labels=labels,
        schema=schema,
        source=source,
    )


def _empty(schema: DatasetSchema, *, source: str) -> LocalDataset:
    return LocalDataset(
        patient_ids=(),
        features=np.zeros((0, schema.n_features), dtype=np.float32),
        labels=np.zeros(0, dtype=np.float32),
        source=source,
    )


def split_holdout(
    dataset: LocalDataset, *, fraction: float, salt: str
) -> tuple[LocalDataset, LocalDataset]:
    """Split into (train, holdout), deciding per patient from a salted hash of the patient id.

    Each row's side depends only on its own id, so adding or removing rows (a consent withdrawal)
    never moves another patient between train and holdout.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout fraction must be strictly between 0 and 1, got {fraction}")
    in_holdout = np.array(
        [holdout_score(patient_id, salt=salt) < fraction for patient_id in dataset.patient_ids],
        dtype=np.bool_,
    )
    train, holdout = dataset.subset(~in_holdout), dataset.subset(in_holdout)
    if len(train) == 0 or len(holdout) == 0:
        empty = "holdout" if len(holdout) == 0 else "training"
        raise DataError(
            f"splitting {len(dataset)} rows with holdout fraction {fraction} leaves the {empty} "
            "part empty; the dataset is too small to both train and evaluate on (add rows, or "
            "use a holdout fraction nearer 0.5)",
            path=dataset.source,
        )
    return train, holdout


def holdout_score(patient_id: str, *, salt: str) -> float:
    """Uniform in [0, 1), fixed per (salt, patient): the row is held out iff this is < fraction."""
    digest = hashlib.sha256(f"{salt}:{patient_id}".encode()).hexdigest()
    return int(digest[:16], 16) / 2**64


def _read_table(path: Path, *, source: str) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(
            f"unsupported file type '{path.suffix}'; export the data as "
            f"{' or '.join(SUPPORTED_SUFFIXES)}",
            path=source,
        )
    if not path.is_file():
        raise DataError("file not found; check the dataset path in the node config", path=source)
    if suffix == ".csv":
        table = _read_csv(path, source=source)
    else:
        table = _read_parquet(path, source=source)
    return table.rename(columns=str.strip)


def _read_csv(path: Path, *, source: str) -> pd.DataFrame:
    try:
        with warnings.catch_warnings():
            # pandas only warns when a row has more fields than the header; that is a broken file.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            header = pd.read_csv(
                path, header=None, nrows=1, dtype=str, keep_default_na=False, encoding="utf-8-sig"
            )
            # Blank lines are kept (and dropped later) so row numbers match the file's lines.
            table = pd.read_csv(
                path,
                index_col=False,
                skip_blank_lines=False,
                dtype=str,
                keep_default_na=False,
                encoding="utf-8-sig",
            )
    except pd.errors.EmptyDataError:
        raise DataError(
            "the file is empty; it needs a header row naming the columns and one row per patient",
            path=source,
        ) from None
    except UnicodeDecodeError as error:
        raise DataError(
            f"the file is not UTF-8 text ({error.reason} at byte {error.start}); "
            "re-export it as UTF-8 CSV",
            path=source,
        ) from None
    except (pd.errors.ParserError, pd.errors.ParserWarning) as error:
        raise DataError(f"not a well-formed CSV file: {error}".strip(), path=source) from None
    _check_unique_header([str(name) for name in header.iloc[0]], source=source)
    return table


def _read_parquet(path: Path, *, source: str) -> pd.DataFrame:
    try:
        table = pd.read_parquet(path)
    except (OSError, ValueError, pa.ArrowException) as error:
        raise DataError(f"could not read the Parquet file: {error}", path=source) from None
    _check_unique_header([str(name) for name in table.columns], source=source)
    if len(table) == 0 and len(table.columns) == 0:
        raise DataError("the file is empty; it has no columns", path=source)
    return pd.DataFrame(
        {str(name): _as_text(table[name]) for name in table.columns},
        index=pd.RangeIndex(len(table)),
    )


def _as_text(values: pd.Series) -> pd.Series:
    """Parquet cells as the text a CSV export would hold, so both formats share one parser."""
    missing = values.isna().to_numpy()
    if pd.api.types.is_float_dtype(values.dtype):
        numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
        # Whole floats print without ".0" so 0.0/1.0 labels and flags read like their CSV form.
        whole = np.isfinite(numbers) & (np.abs(numbers) < 2**53)
        whole[whole] = numbers[whole] == np.round(numbers[whole])
        text = numbers.astype(str).astype(object)
        text[whole] = numbers[whole].astype(np.int64).astype(str)
    else:
        text = values.astype(object).map(str).to_numpy(dtype=object)
    return pd.Series(np.where(missing, "", text), dtype=object)


def _check_unique_header(names: Sequence[str], *, source: str) -> None:
    stripped = [name.strip() for name in names]
    repeated = sorted({name for name in stripped if stripped.count(name) > 1})
    if repeated:
        raise DataError(
            f"column(s) {', '.join(repr(name) for name in repeated)} appear more than once in the "
            "header; keep one of each so it is clear which values to use",
            path=source,
        )


def _check_columns(table: pd.DataFrame, *, schema: DatasetSchema, source: str) -> None:
    present = set(table.columns)
    missing = [name for name in schema.required_columns if name not in present]
    if missing:
        raise DataError(
            f"missing column(s) {', '.join(repr(name) for name in missing)}; the study's schema "
            f"needs: {', '.join(schema.required_columns)} (other columns are ignored)",
            path=source,
        )


def _blank_rows(table: pd.DataFrame) -> npt.NDArray[np.bool_]:
    """Rows where every cell is empty, e.g. blank lines: they are not patients."""
    blank = np.ones(len(table), dtype=np.bool_)
    for name in table.columns:
        blank &= (table[name].astype(str).str.strip() == "").to_numpy()
    return blank


def _parse_ids(
    values: pd.Series, *, rows: npt.NDArray[np.int64], schema: DatasetSchema, source: str
) -> tuple[str, ...]:
    ids = [str(value).strip() for value in values.tolist()]
    first_row: dict[str, int] = {}
    for patient_id, row in zip(ids, rows, strict=True):
        if not patient_id:
            raise DataError(
                "the patient id is empty; every row needs an id (it is how consent is checked)",
                path=source,
                row=int(row),
                column=schema.id_column,
            )
        if patient_id in first_row:
            raise DataError(
                f"patient id '{patient_id}' appears in rows {first_row[patient_id]} and {row}; "
                "each patient must appear once (merge or remove the duplicate)",
                path=source,
                row=int(row),
                column=schema.id_column,
            )
        first_row[patient_id] = int(row)
    return tuple(ids)


@dataclass(frozen=True)
class _Problem:
    row: int
    column: str
    message: str


@dataclass(frozen=True)
class _Parsed:
    """One schema column parsed: encoded values (NaN where missing) and which cells were missing."""

    values: npt.NDArray[np.float64]  # shape (n,) or (n, width)
    missing: npt.NDArray[np.bool_]


class _ParsedColumns:
    """Parses columns vectorised, remembering the first bad cell of each column.

    The error raised is the bad cell nearest the top of the file, which is the one a person fixing
    the file finds first, with a count of how many other cells are bad too.
    """

    def __init__(self, *, rows: npt.NDArray[np.int64], source: str) -> None:
        self._rows = rows
        self._source = source
        self._problems: list[_Problem] = []
        self._bad_cells = 0

    def raise_first_problem(self) -> None:
        if not self._problems:
            return
        first = min(self._problems, key=lambda problem: problem.row)
        message = first.message
        others = self._bad_cells - 1
        if others:
            message += f"; {others} other cell(s) in this file have problems too"
        raise DataError(message, path=self._source, row=first.row, column=first.column)

    def _flag(self, bad: npt.NDArray[np.bool_], *, column: str, describe: str) -> None:
        """Record the first cell where ``bad`` is true; ``describe`` may use ``{value}``."""
        if not bad.any():
            return
        index = int(np.argmax(bad))
        self._bad_cells += int(bad.sum())
        self._problems.append(_Problem(row=int(self._rows[index]), column=column, message=describe))

    def feature(self, column: Column, values: pd.Series, *, policy: MissingPolicy) -> _Parsed:
        text = values.astype(str).str.strip()
        lowered = text.str.lower()
        missing = lowered.isin(MISSING_TOKENS).to_numpy()
        if column.type is ColumnType.CATEGORY:
            missing = missing & ~text.isin(column.categories).to_numpy()
        if policy is MissingPolicy.ERROR:
            self._flag_missing(missing, column=column.name, what="value", policy=policy, text=text)
        if column.type is ColumnType.CATEGORY:
            return _Parsed(self._category(column, text, missing), missing)
        if column.type is ColumnType.BOOL:
            return _Parsed(self._bool(column.name, lowered, missing), missing)
        return _Parsed(self._numeric(column, text, missing), missing)

    def label(self, name: str, values: pd.Series, *, policy: MissingPolicy) -> _Parsed:
        text = values.astype(str).str.strip()
        lowered = text.str.lower()
        missing = lowered.isin(MISSING_TOKENS).to_numpy()
        if policy is not MissingPolicy.DROP_ROW:
            # An outcome is never imputed: a made-up label is a made-up patient outcome.
            self._flag_missing(missing, column=name, what="label", policy=policy, text=text)
        encoded = _map_tokens(lowered, true=_TRUE_TOKENS | {"1.0"}, false=_FALSE_TOKENS | {"0.0"})
        bad = ~missing & np.isnan(encoded)
        self._flag_first_value(
            bad,
            text,
            column=name,
            template="label {value} is not binary; use 1 (positive) or 0 (negative), or true/false",
        )
        return _Parsed(encoded, missing)

    def _flag_missing(
        self,
        missing: npt.NDArray[np.bool_],
        *,
        column: str,
        what: str,
        policy: MissingPolicy,
        text: pd.Series,
    ) -> None:
        if policy is MissingPolicy.ERROR:
            advice = "fill it in, remove the row, or ask the study for drop-row or impute-mean"
        else:
            advice = f"a {what} is never imputed; fill it in or remove the row"
        self._flag_first_value(
            missing,
            text,
            column=column,
            template=f"the {what} is missing (the cell holds {{value}}) and the study's "
            f"missing-value policy is '{policy.value}'; {advice}",
        )

    def _flag_first_value(
        self, bad: npt.NDArray[np.bool_], text: pd.Series, *, column: str, template: str
    ) -> None:
        if bad.any():
            value = str(text.iloc[int(np.argmax(bad))])
            self._flag(bad, column=column, describe=template.format(value=repr(value)))

    def _numeric(
        self, column: Column, text: pd.Series, missing: npt.NDArray[np.bool_]
    ) -> npt.NDArray[np.float64]:
        numbers = _numbers(text, missing)
        not_a_number = ~missing & np.isnan(numbers)
        self._flag_first_value(
            not_a_number,
            text,
            column=column.name,
            template="value {value} is not a number",
        )
        checked = ~missing & ~not_a_number
        if column.type is ColumnType.INT:
            fractional = checked & (numbers != np.round(numbers))
            self._flag_first_value(
                fractional,
                text,
                column=column.name,
                template=f"value {{value}} is not a whole number (column '{column.name}' is int)",
            )
        minimum, maximum = column.declared_range
        outside = checked & ((numbers < minimum) | (numbers > maximum))
        self._flag_first_value(
            outside,
            text,
            column=column.name,
            template=f"value {{value}} is outside the declared range [{minimum:g}, {maximum:g}]; "
            "correct it or remove the row (values are not clipped)",
        )
        return column.scaled(numbers)

    def _bool(
        self, name: str, lowered: pd.Series, missing: npt.NDArray[np.bool_]
    ) -> npt.NDArray[np.float64]:
        encoded = _map_tokens(lowered, true=_TRUE_TOKENS, false=_FALSE_TOKENS)
        self._flag_first_value(
            ~missing & np.isnan(encoded),
            lowered,
            column=name,
            template="value {value} is not a yes/no value; use true/false, 1/0 or yes/no",
        )
        return encoded

    def _category(
        self, column: Column, text: pd.Series, missing: npt.NDArray[np.bool_]
    ) -> npt.NDArray[np.float64]:
        codes = pd.Index(column.categories).get_indexer(pd.Index(text))
        unknown = ~missing & (codes < 0)
        self._flag_first_value(
            unknown,
            text,
            column=column.name,
            template="value {value} is not one of the declared categories "
            f"({', '.join(column.categories)}); categories are case-sensitive",
        )
        one_hot = np.zeros((len(text), column.width), dtype=np.float64)
        known = codes >= 0
        one_hot[np.flatnonzero(known), codes[known]] = 1.0
        one_hot[missing] = np.nan
        return one_hot


def _numbers(text: pd.Series, missing: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
    """Each cell's number; NaN where it is missing or not a number.

    Arrow casts a whole column at once, 30 times faster than pandas' `to_numeric` at 100,000
    rows and 5 times at 300 (the pandas columns hold Arrow large strings already), but refuses
    the column at its first cell that is not a number: only such a column goes through
    `to_numeric`, which reads every cell it can. Where both read a cell they agree, except that
    Arrow reads "nan" as NaN, which is then flagged like any cell that is not a number.
    """
    try:
        text_type = pa.large_string()
        cells = pc.if_else(missing, pa.scalar(None, text_type), pa.array(text, text_type))
        return np.asarray(pc.cast(cells, pa.float64()).to_numpy(zero_copy_only=False), np.float64)
    except pa.ArrowInvalid:
        return pd.to_numeric(text.where(~missing, ""), errors="coerce").to_numpy(
            dtype=np.float64, na_value=np.nan
        )


def _map_tokens(
    lowered: pd.Series, *, true: frozenset[str], false: frozenset[str]
) -> npt.NDArray[np.float64]:
    encoded = np.full(len(lowered), np.nan)
    encoded[lowered.isin(true).to_numpy()] = 1.0
    encoded[lowered.isin(false).to_numpy()] = 0.0
    return encoded


def _assemble(
    *,
    patient_ids: tuple[str, ...],
    features: Sequence[_Parsed],
    labels: _Parsed,
    schema: DatasetSchema,
    source: str,
) -> LocalDataset:
    matrix = np.column_stack([parsed.values for parsed in features])
    label_values = labels.values
    keep = np.ones(len(patient_ids), dtype=np.bool_)
    if schema.missing is MissingPolicy.DROP_ROW:
        for parsed in (*features, labels):
            keep &= ~parsed.missing
        if not keep.any():
            raise DataError(
                f"every one of the {len(patient_ids)} rows has a missing value, so the "
                "'drop-row' policy leaves nothing to train on; fill in the missing values",
                path=source,
            )
        matrix, label_values = matrix[keep], label_values[keep]
    elif schema.missing is MissingPolicy.IMPUTE_MEAN:
        matrix = _impute_column_means(matrix, schema=schema, source=source)
    return LocalDataset(
        patient_ids=tuple(pid for pid, kept in zip(patient_ids, keep, strict=True) if kept),
        features=matrix.astype(np.float32),
        labels=label_values.astype(np.float32),
        source=source,
    )


def _impute_column_means(
    matrix: npt.NDArray[np.float64], *, schema: DatasetSchema, source: str
) -> npt.NDArray[np.float64]:
    """Replace NaNs with this hospital's column mean of the encoded values.

    For a category column that is the local frequency of each category; for bool, the local rate.
    """
    missing = np.isnan(matrix)
    empty = missing.all(axis=0)
    if empty.any():
        name = schema.feature_names[int(np.argmax(empty))]
        raise DataError(
            "every value is missing, so the 'impute-mean' policy has no mean to fill in; "
            "provide values for this column",
            path=source,
            column=name.split("=", 1)[0],
        )
    means = np.nanmean(matrix, axis=0)
    return np.where(missing, means, matrix)
