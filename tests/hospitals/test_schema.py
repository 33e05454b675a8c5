import copy
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from hospitals.schema import (
    Column,
    ColumnType,
    DatasetSchema,
    MissingPolicy,
    Reference,
    SchemaError,
)


def schema_document() -> dict[str, Any]:
    return {
        "features": [
            {"name": "age", "type": "int", "minimum": 0.0, "maximum": 120.0},
            {
                "name": "lactate",
                "type": "float",
                "minimum": 0.0,
                "maximum": 20.0,
                "reference": {"mean": 1.8, "sd": 1.2},
            },
            {"name": "smoker", "type": "bool"},
            {"name": "sex", "type": "category", "categories": ["female", "male", "other"]},
        ],
        "label": "died",
        "id_column": "patient_id",
        "missing": "drop-row",
    }


def test_round_trip_through_json() -> None:
    document = schema_document()
    schema = DatasetSchema.from_dict(document)

    assert schema.to_dict() == document
    assert DatasetSchema.from_dict(json.loads(json.dumps(schema.to_dict()))) == schema
    assert DatasetSchema.from_json(schema.to_json()) == schema


def test_parsed_fields() -> None:
    schema = DatasetSchema.from_dict(schema_document())

    assert schema.features[0] == Column(name="age", type=ColumnType.INT, minimum=0, maximum=120)
    assert schema.features[1].reference == Reference(mean=1.8, sd=1.2)
    assert schema.features[3].categories == ("female", "male", "other")
    assert schema.missing is MissingPolicy.DROP_ROW
    assert schema.required_columns == ("patient_id", "age", "lactate", "smoker", "sex", "died")


def test_encoded_width_and_names() -> None:
    schema = DatasetSchema.from_dict(schema_document())

    assert schema.n_features == 6
    assert schema.feature_names == (
        "age",
        "lactate",
        "smoker",
        "sex=female",
        "sex=male",
        "sex=other",
    )


def test_missing_policy_defaults_to_error() -> None:
    document = schema_document()
    del document["missing"]

    assert DatasetSchema.from_dict(document).missing is MissingPolicy.ERROR


def test_integer_bounds_are_accepted_and_canonicalised() -> None:
    document = schema_document()
    document["features"][0].update(minimum=0, maximum=120)

    assert DatasetSchema.from_dict(document).to_dict() == schema_document()


Mutation = Callable[[dict[str, Any]], None]


def _set_feature(index: int, **changes: Any) -> Mutation:
    def mutate(document: dict[str, Any]) -> None:
        document["features"][index].update(changes)

    return mutate


def _drop_feature_key(index: int, key: str) -> Mutation:
    def mutate(document: dict[str, Any]) -> None:
        del document["features"][index][key]

    return mutate


def _set(**changes: Any) -> Mutation:
    def mutate(document: dict[str, Any]) -> None:
        document.update(changes)

    return mutate


INVALID = {
    "unknown top-level key": (_set(target="died"), "schema", "unknown key(s) target"),
    "label missing": (lambda d: d.pop("label"), "label", "required field is missing"),
    "id not a string": (_set(id_column=7), "id_column", "expected a string"),
    "features not a list": (_set(features="age"), "features", "expected a list"),
    "no features": (_set(features=[]), "features", "at least one feature"),
    "column not an object": (_set(features=["age"]), "features[0]", "expected an object"),
    "unknown column key": (_set_feature(2, unit="y"), "features[2]", "unknown key(s) unit"),
    "unknown type": (_set_feature(0, type="string"), "features[0].type", "'category'"),
    "type not a string": (_set_feature(0, type=3), "features[0].type", "expected a string"),
    "empty name": (_set_feature(1, name=""), "features[1].name", "non-empty column name"),
    "padded name": (_set_feature(1, name=" age"), "features[1].name", "leading or trailing"),
    "numeric without minimum": (
        _drop_feature_key(1, "minimum"),
        "features[1].minimum",
        "must declare a minimum",
    ),
    "minimum not below maximum": (
        _set_feature(1, minimum=5.0, maximum=5.0),
        "features[1].maximum",
        "minimum < maximum",
    ),
    "bound is a bool": (_set_feature(1, maximum=True), "features[1].maximum", "expected a number"),
    "bound is a string": (_set_feature(1, minimum="0"), "features[1].minimum", "expected a number"),
    "bound is infinite": (
        _set_feature(1, maximum=float("inf")),
        "features[1].maximum",
        "finite number",
    ),
    "range on a bool column": (_set_feature(2, minimum=0.0), "features[2].minimum", "only float"),
    "categories on a float column": (
        _set_feature(1, categories=["low", "high"]),
        "features[1].categories",
        "only category columns",
    ),
    "one category": (
        _set_feature(3, categories=["female"]),
        "features[3].categories",
        "at least 2 categories",
    ),
    "repeated category": (
        _set_feature(3, categories=["female", "male", "female"]),
        "features[3].categories",
        "more than once: female",
    ),
    "empty category": (
        _set_feature(3, categories=["female", ""]),
        "features[3].categories",
        "non-empty strings",
    ),
    "category not a string": (
        _set_feature(3, categories=["female", 1]),
        "features[3].categories",
        "list of strings",
    ),
    "reference on a bool column": (
        _set_feature(2, reference={"mean": 0.5, "sd": 0.5}),
        "features[2].reference",
        "only float and int columns take minimum/maximum/reference",
    ),
    "reference not an object": (
        _set_feature(1, reference=1.8),
        "features[1].reference",
        "expected an object",
    ),
    "reference without sd": (
        _set_feature(1, reference={"mean": 1.8}),
        "features[1].reference",
        "needs both mean and sd; missing sd",
    ),
    "unknown reference key": (
        _set_feature(1, reference={"mean": 1.8, "sd": 1.2, "median": 1.5}),
        "features[1].reference",
        "unknown key(s) median",
    ),
    "reference sd zero": (
        _set_feature(1, reference={"mean": 1.8, "sd": 0}),
        "features[1].reference.sd",
        "finite number > 0",
    ),
    "reference mean infinite": (
        _set_feature(1, reference={"mean": float("nan"), "sd": 1.2}),
        "features[1].reference.mean",
        "finite number",
    ),
    "reference mean outside the range": (
        _set_feature(1, reference={"mean": 25.0, "sd": 1.2}),
        "features[1].reference",
        "lies outside its declared range [0, 20]",
    ),
    "duplicate feature": (_set_feature(1, name="age"), "features[1].name", "declared twice"),
    "label is a feature": (_set(label="age"), "label", "also a feature"),
    "id is a feature": (_set(id_column="sex"), "id_column", "also a feature"),
    "label is the id": (_set(label="patient_id"), "id_column", "must be different"),
    "unknown missing policy": (_set(missing="zero"), "missing", "'impute-mean'"),
    "encoded names clash": (
        _set_feature(1, name="sex=male"),
        "features",
        "encoded feature names clash: sex=male",
    ),
}


@pytest.mark.parametrize(("mutate", "field", "message"), INVALID.values(), ids=INVALID.keys())
def test_invalid_definitions_name_the_field(mutate: Mutation, field: str, message: str) -> None:
    document = copy.deepcopy(schema_document())
    mutate(document)

    with pytest.raises(SchemaError) as caught:
        DatasetSchema.from_dict(document)

    assert caught.value.field == field
    assert f"schema field '{field}'" in str(caught.value)
    assert message in str(caught.value)


def test_a_schema_without_references_keeps_its_document() -> None:
    # Studies created before references existed must hash to the same protocol.
    document = schema_document()
    del document["features"][1]["reference"]

    assert "reference" not in DatasetSchema.from_dict(document).to_dict()["features"][1]


def test_numeric_values_scale_by_the_reference_or_else_the_range() -> None:
    by_range = Column(name="lactate", type=ColumnType.FLOAT, minimum=0.0, maximum=20.0)
    by_reference = Column(
        name="lactate",
        type=ColumnType.FLOAT,
        minimum=0.0,
        maximum=20.0,
        reference=Reference(mean=1.8, sd=1.2),
    )
    values = np.array([0.0, 1.8, 3.0, 20.0])

    np.testing.assert_allclose(by_range.scaled(values), [-1.0, -0.82, -0.7, 1.0])
    np.testing.assert_allclose(by_reference.scaled(values), [-1.5, 0.0, 1.0, 182 / 12])


def test_document_must_be_an_object() -> None:
    with pytest.raises(SchemaError, match="expected an object, got list"):
        DatasetSchema.from_dict([])  # type: ignore[arg-type]


def test_invalid_json_is_a_schema_error() -> None:
    with pytest.raises(SchemaError, match="not valid JSON"):
        DatasetSchema.from_json("{features: []")


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(SchemaError, match="minimum < maximum"):
        Column(name="age", type=ColumnType.FLOAT, minimum=10, maximum=1)
