"""The dataset schema a study declares: the columns a hospital's file must have, and their encoding.

The schema is part of the study protocol, so it is plain data (``to_dict``/``from_dict`` round-trip
through JSON) and every hospital encodes its rows identically from it. Numeric features are scaled
by what the schema *declares* rather than by statistics of the data: the scaling is then the same
at every hospital and reveals nothing about any hospital's rows. A column declares its range and,
optionally, a reference population's mean and standard deviation (published norms, say); with a
reference a value becomes its z-score against it, otherwise the range maps to [-1, 1].

Declare a reference where the range is much wider than the values patients have (lactate 0–20
mmol/L, nearly all of them 0.5–4): range scaling then squeezes the column into a sliver of
[-1, 1], its true weight becomes large, and (DP-)SGD needs far more steps to reach it. In the
utility benchmark at ε = 3, references took a DP-trained federated logistic regression on the
synthetic cohort from 1.1 pp AUC and 1.7 pp accuracy below a centralized non-private one to level
with it, and on the breast-cancer demo from 6.7 to 2.9 pp accuracy below.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np


class SchemaError(ValueError):
    """A schema definition is invalid; ``field`` names the part, e.g. ``features[2].maximum``."""

    def __init__(self, problem: str, *, field: str) -> None:
        super().__init__(f"schema field '{field}': {problem}")
        self.problem = problem
        self.field = field


class ColumnType(StrEnum):
    FLOAT = "float"
    INT = "int"
    BOOL = "bool"
    CATEGORY = "category"


class MissingPolicy(StrEnum):
    """What loading does with an empty feature cell.

    ``impute-mean`` uses the hospital's *local* column mean, so nothing about the data leaves the
    node.
    """

    ERROR = "error"
    DROP_ROW = "drop-row"
    IMPUTE_MEAN = "impute-mean"


NUMERIC_TYPES = frozenset({ColumnType.FLOAT, ColumnType.INT})

_COLUMN_KEYS = frozenset({"name", "type", "minimum", "maximum", "reference", "categories"})
_REFERENCE_KEYS = frozenset({"mean", "sd"})
_SCHEMA_KEYS = frozenset({"features", "label", "id_column", "missing"})
_MIN_CATEGORIES = 2


@dataclass(frozen=True)
class Reference:
    """A reference population's mean and standard deviation of a numeric column: public figures
    the study declares, never statistics of a hospital's rows."""

    mean: float
    sd: float

    def __post_init__(self) -> None:
        if not math.isfinite(self.mean):
            raise SchemaError(f"mean must be a finite number, got {self.mean}", field="mean")
        if not (math.isfinite(self.sd) and self.sd > 0):
            raise SchemaError(f"sd must be a finite number > 0, got {self.sd}", field="sd")

    @classmethod
    def from_dict(cls, data: object, *, field: str) -> Reference | None:
        if data is None:
            return None
        mapping = _require_mapping(data, field=field, allowed=_REFERENCE_KEYS)
        mean = _optional_number(mapping, "mean", field=field)
        sd = _optional_number(mapping, "sd", field=field)
        if mean is None or sd is None:
            missing = " and ".join(key for key in ("mean", "sd") if mapping.get(key) is None)
            raise SchemaError(f"a reference needs both mean and sd; missing {missing}", field=field)
        try:
            return cls(mean=mean, sd=sd)
        except SchemaError as error:
            raise SchemaError(error.problem, field=f"{field}.{error.field}") from None


@dataclass(frozen=True)
class Column:
    """One feature column.

    Numeric columns declare ``minimum < maximum``, and values outside it are data errors. Values
    are scaled to [-1, 1] by that range (centred, so that gradients are better conditioned), or
    with a ``reference`` (mean, sd) to their z-score against it. Category columns list at least
    two categories, one-hot encoded in the declared order; bool columns take
    true/false/1/0/yes/no.
    """

    name: str
    type: ColumnType
    minimum: float | None = None
    maximum: float | None = None
    categories: tuple[str, ...] = ()
    reference: Reference | None = None

    def __post_init__(self) -> None:
        _check_name(self.name, field="name")
        if not isinstance(self.type, ColumnType):
            raise SchemaError(
                f"column '{self.name}' has type {self.type!r}; use one of {_choices(ColumnType)}",
                field=f"{self.name}.type",
            )
        if self.type in NUMERIC_TYPES:
            self._check_reference(*self._check_range())
        elif self.minimum is not None or self.maximum is not None or self.reference is not None:
            raise SchemaError(
                f"column '{self.name}' is {self.type.value}; only float and int columns take "
                "minimum/maximum/reference, remove them",
                field=f"{self.name}.{'reference' if self.reference is not None else 'minimum'}",
            )
        if self.type is ColumnType.CATEGORY:
            self._check_categories()
        elif self.categories:
            raise SchemaError(
                f"column '{self.name}' is {self.type.value}; only category columns take "
                "categories, remove them or change the type to 'category'",
                field=f"{self.name}.categories",
            )

    def _check_range(self) -> tuple[float, float]:
        minimum = self._check_bound("minimum", self.minimum)
        maximum = self._check_bound("maximum", self.maximum)
        if not minimum < maximum:
            raise SchemaError(
                f"column '{self.name}' needs minimum < maximum, got minimum={minimum} and "
                f"maximum={maximum}",
                field=f"{self.name}.maximum",
            )
        return minimum, maximum

    def _check_reference(self, minimum: float, maximum: float) -> None:
        if self.reference is not None and not minimum <= self.reference.mean <= maximum:
            raise SchemaError(
                f"the reference mean {self.reference.mean:g} of column '{self.name}' lies "
                f"outside its declared range [{minimum:g}, {maximum:g}]",
                field=f"{self.name}.reference",
            )

    @property
    def declared_range(self) -> tuple[float, float]:
        if self.minimum is None or self.maximum is None:
            raise ValueError(f"column '{self.name}' is not a numeric column with a declared range")
        return self.minimum, self.maximum

    def scaled(self, values: np.ndarray) -> np.ndarray:
        """Numeric values as the model sees them: z-scores against the reference, else the
        declared range mapped to [-1, 1]."""
        if self.reference is not None:
            return (values - self.reference.mean) / self.reference.sd
        minimum, maximum = self.declared_range
        return 2.0 * (values - minimum) / (maximum - minimum) - 1.0

    def _check_bound(self, bound_name: str, bound: float | None) -> float:
        field = f"{self.name}.{bound_name}"
        if bound is None:
            raise SchemaError(
                f"numeric column '{self.name}' must declare a {bound_name}: features are "
                "scaled by the declared range, not by the data",
                field=field,
            )
        if not math.isfinite(bound):
            raise SchemaError(
                f"{bound_name} of column '{self.name}' must be a finite number, got {bound}",
                field=field,
            )
        return bound

    def _check_categories(self) -> None:
        field = f"{self.name}.categories"
        if len(self.categories) < _MIN_CATEGORIES:
            raise SchemaError(
                f"category column '{self.name}' must list at least {_MIN_CATEGORIES} categories, "
                f"got {list(self.categories)}",
                field=field,
            )
        for category in self.categories:
            if not isinstance(category, str) or not category.strip():
                raise SchemaError(
                    f"categories of column '{self.name}' must be non-empty strings, "
                    f"got {category!r}",
                    field=field,
                )
        duplicates = sorted({c for c in self.categories if self.categories.count(c) > 1})
        if duplicates:
            raise SchemaError(
                f"column '{self.name}' lists categories more than once: {', '.join(duplicates)}",
                field=field,
            )

    @property
    def width(self) -> int:
        """Number of encoded feature columns this column becomes."""
        return len(self.categories) if self.type is ColumnType.CATEGORY else 1

    @property
    def encoded_names(self) -> tuple[str, ...]:
        if self.type is ColumnType.CATEGORY:
            return tuple(f"{self.name}={category}" for category in self.categories)
        return (self.name,)

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {"name": self.name, "type": self.type.value}
        if self.type in NUMERIC_TYPES:
            result["minimum"] = self.minimum
            result["maximum"] = self.maximum
        # Only when declared: a schema without references keeps the document, and the protocol
        # hash, it always had.
        if self.reference is not None:
            result["reference"] = {"mean": self.reference.mean, "sd": self.reference.sd}
        if self.type is ColumnType.CATEGORY:
            result["categories"] = list(self.categories)
        return result

    @classmethod
    def from_dict(cls, data: object, *, field: str) -> Column:
        mapping = _require_mapping(data, field=field, allowed=_COLUMN_KEYS)
        name = _require_str(mapping, "name", field=field)
        type_field = f"{field}.type"
        raw_type = _require_str(mapping, "type", field=field)
        try:
            column_type = ColumnType(raw_type)
        except ValueError:
            raise SchemaError(
                f"unknown column type {raw_type!r}; use one of {_choices(ColumnType)}",
                field=type_field,
            ) from None
        # Anchored at the document position already; the column's own checks are re-anchored.
        reference = Reference.from_dict(mapping.get("reference"), field=f"{field}.reference")
        try:
            return cls(
                name=name,
                type=column_type,
                minimum=_optional_number(mapping, "minimum", field=field),
                maximum=_optional_number(mapping, "maximum", field=field),
                categories=_optional_str_list(mapping, "categories", field=field),
                reference=reference,
            )
        except SchemaError as error:
            # Re-anchor "<column>.<attribute>" to the column's position in the document, which is
            # where the author has to look.
            attribute = error.field.rsplit(".", 1)[-1]
            raise SchemaError(error.problem, field=f"{field}.{attribute}") from None


@dataclass(frozen=True)
class DatasetSchema:
    """Feature columns, the binary label column (0/1 or true/false) and the patient id column."""

    features: tuple[Column, ...]
    label: str
    id_column: str
    missing: MissingPolicy = MissingPolicy.ERROR

    def __post_init__(self) -> None:
        if not self.features:
            raise SchemaError("a schema needs at least one feature column", field="features")
        _check_name(self.label, field="label")
        _check_name(self.id_column, field="id_column")
        if not isinstance(self.missing, MissingPolicy):
            raise SchemaError(
                f"unknown missing-value policy {self.missing!r}; "
                f"use one of {_choices(MissingPolicy)}",
                field="missing",
            )
        names = [column.name for column in self.features]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise SchemaError(
                    f"feature column '{name}' is declared twice; column names must be unique",
                    field=f"features[{index}].name",
                )
        for role in ("label", "id_column"):
            name = getattr(self, role)
            if name in names:
                raise SchemaError(
                    f"'{name}' is the {role} and also a feature; it must be one or the other",
                    field=role,
                )
        if self.label == self.id_column:
            raise SchemaError(
                f"label and id_column are both '{self.label}'; they must be different columns",
                field="id_column",
            )
        encoded = [name for column in self.features for name in column.encoded_names]
        clashes = sorted({name for name in encoded if encoded.count(name) > 1})
        if clashes:
            raise SchemaError(
                f"encoded feature names clash: {', '.join(clashes)}; rename the column or category",
                field="features",
            )

    @property
    def n_features(self) -> int:
        """Width of the encoded feature matrix (category columns count once per category)."""
        return sum(column.width for column in self.features)

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Names of the encoded feature columns, e.g. ``("age", "sex=female", "sex=male")``."""
        return tuple(name for column in self.features for name in column.encoded_names)

    @property
    def required_columns(self) -> tuple[str, ...]:
        """Columns a hospital's file must contain: the id, every feature and the label."""
        return (self.id_column, *(column.name for column in self.features), self.label)

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": [column.to_dict() for column in self.features],
            "label": self.label,
            "id_column": self.id_column,
            "missing": self.missing.value,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetSchema:
        mapping = _require_mapping(data, field="schema", allowed=_SCHEMA_KEYS)
        if "features" not in mapping:
            raise SchemaError("required field is missing", field="features")
        raw_features = mapping["features"]
        if not isinstance(raw_features, Sequence) or isinstance(raw_features, str):
            raise SchemaError(
                f"expected a list of columns, got {_type_name(raw_features)}", field="features"
            )
        features = tuple(
            Column.from_dict(raw, field=f"features[{index}]")
            for index, raw in enumerate(raw_features)
        )
        raw_missing = mapping.get("missing", MissingPolicy.ERROR.value)
        if not isinstance(raw_missing, str) or raw_missing not in set(MissingPolicy):
            raise SchemaError(
                f"unknown missing-value policy {raw_missing!r}; "
                f"use one of {_choices(MissingPolicy)}",
                field="missing",
            )
        return cls(
            features=features,
            label=_require_str(mapping, "label", field=""),
            id_column=_require_str(mapping, "id_column", field=""),
            missing=MissingPolicy(raw_missing),
        )

    @classmethod
    def from_json(cls, text: str) -> DatasetSchema:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise SchemaError(f"not valid JSON ({error})", field="schema") from None
        return cls.from_dict(data)


def _check_name(name: object, *, field: str) -> None:
    if not isinstance(name, str) or not name.strip():
        raise SchemaError(f"expected a non-empty column name, got {name!r}", field=field)
    if name != name.strip():
        raise SchemaError(
            f"column name {name!r} has leading or trailing spaces; remove them", field=field
        )


def _choices(enum: type[StrEnum]) -> str:
    return ", ".join(repr(member.value) for member in enum)


def _type_name(value: object) -> str:
    return type(value).__name__


def _join(field: str, key: str) -> str:
    return f"{field}.{key}" if field else key


def _require_mapping(data: object, *, field: str, allowed: frozenset[str]) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise SchemaError(f"expected an object, got {_type_name(data)}", field=field)
    unknown = sorted(str(key) for key in data if key not in allowed)
    if unknown:
        raise SchemaError(
            f"unknown key(s) {', '.join(unknown)}; allowed keys are {', '.join(sorted(allowed))}",
            field=field,
        )
    return data


def _require_str(mapping: Mapping[str, Any], key: str, *, field: str) -> str:
    if key not in mapping:
        raise SchemaError("required field is missing", field=_join(field, key))
    value = mapping[key]
    if not isinstance(value, str):
        raise SchemaError(f"expected a string, got {_type_name(value)}", field=_join(field, key))
    return value


def _optional_number(mapping: Mapping[str, Any], key: str, *, field: str) -> float | None:
    value = mapping.get(key)
    if value is None:
        return None
    # bool is an int subclass, but `"minimum": true` is a mistake, not the number 1.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SchemaError(f"expected a number, got {_type_name(value)}", field=_join(field, key))
    return float(value)


def _optional_str_list(mapping: Mapping[str, Any], key: str, *, field: str) -> tuple[str, ...]:
    value = mapping.get(key, ())
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise SchemaError(
            f"expected a list of strings, got {_type_name(value)}", field=_join(field, key)
        )
    for item in value:
        if not isinstance(item, str):
            raise SchemaError(
                f"expected a list of strings, found {item!r} ({_type_name(item)})",
                field=_join(field, key),
            )
    return tuple(value)
