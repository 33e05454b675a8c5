import json
from typing import Any

import numpy as np
import pytest
import torch
from opacus.validators import ModuleValidator
from torch import nn

from hospitals.models import (
    CATALOG,
    ModelSpec,
    ModelSpecError,
    build_model,
    get_flat_parameters,
    parameter_count,
    set_flat_parameters,
)

N_FEATURES = 7


def spec(name: str = "mlp", **hyperparameters: Any) -> ModelSpec:
    return ModelSpec.from_dict({"name": name, "hyperparameters": hyperparameters})


def test_from_dict_fills_defaults_and_round_trips_through_json() -> None:
    mlp = ModelSpec.from_dict({"name": "mlp"})

    assert mlp.to_dict() == {
        "name": "mlp",
        "hyperparameters": {"activation": "relu", "hidden": [32]},
    }
    assert ModelSpec.from_dict(json.loads(json.dumps(mlp.to_dict()))) == mlp
    assert dict(spec(hidden=[16, 8], activation="tanh").hyperparameters) == {
        "activation": "tanh",
        "hidden": (16, 8),
    }


def test_spelling_out_a_default_gives_an_equal_hashable_spec() -> None:
    assert spec(hidden=[32]) == spec()
    assert hash(spec(hidden=[32], activation="relu")) == hash(spec())
    assert len({spec(), spec(hidden=[32]), spec(hidden=[64])}) == 2


def test_hyperparameters_cannot_be_changed_after_validation() -> None:
    with pytest.raises(TypeError):
        spec().hyperparameters["hidden"] = [4096]  # type: ignore[index]


INVALID = {
    "unknown model": ({"name": "resnet50"}, "unknown model 'resnet50'; the catalog has:"),
    "name not a string": ({"name": 3}, "'name' must be a string"),
    "unknown spec key": ({"name": "mlp", "code": "x"}, "unknown model spec key(s) code"),
    "hyperparameters not an object": (
        {"name": "mlp", "hyperparameters": [32]},
        "must be an object, got list",
    ),
    "unknown hyperparameter": (
        {"name": "mlp", "hyperparameters": {"dropout": 0.5}},
        "model 'mlp' has no hyperparameter(s) dropout; allowed: activation, hidden",
    ),
    "hyperparameter for a model without any": (
        {"name": "logistic_regression", "hyperparameters": {"hidden": [8]}},
        "no hyperparameter(s) hidden; allowed: none",
    ),
    "hidden not a list": (
        {"name": "mlp", "hyperparameters": {"hidden": 32}},
        "'hidden' must be a list of integers, got 32",
    ),
    "hidden holds floats": (
        {"name": "mlp", "hyperparameters": {"hidden": [8.0]}},
        "'hidden' must be a list of integers",
    ),
    "hidden holds bools": (
        {"name": "mlp", "hyperparameters": {"hidden": [True]}},
        "'hidden' must be a list of integers",
    ),
    "no hidden layer": (
        {"name": "mlp", "hyperparameters": {"hidden": []}},
        "'hidden' must have 1 to 4 entries, got 0",
    ),
    "too many hidden layers": (
        {"name": "mlp", "hyperparameters": {"hidden": [8] * 5}},
        "'hidden' must have 1 to 4 entries, got 5",
    ),
    "layer too wide": (
        {"name": "mlp", "hyperparameters": {"hidden": [8, 2048]}},
        "between 1 and 1024, got [2048]",
    ),
    "empty layer": (
        {"name": "mlp", "hyperparameters": {"hidden": [0]}},
        "between 1 and 1024, got [0]",
    ),
    "unknown activation": (
        {"name": "mlp", "hyperparameters": {"activation": "gelu"}},
        "'activation' must be one of relu, tanh, got 'gelu'",
    ),
}


@pytest.mark.parametrize(("document", "message"), INVALID.values(), ids=INVALID.keys())
def test_invalid_specs_are_rejected_with_the_reason(document: Any, message: str) -> None:
    with pytest.raises(ModelSpecError) as caught:
        ModelSpec.from_dict(document)

    assert message in str(caught.value)


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_every_catalog_model_outputs_one_logit_per_row(name: str) -> None:
    model = build_model(ModelSpec(name=name), n_features=N_FEATURES, seed=0)

    assert model(torch.zeros(5, N_FEATURES)).shape == (5,)
    assert model(torch.zeros(1, N_FEATURES)).shape == (1,)


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_every_catalog_model_is_trainable_by_opacus(name: str) -> None:
    model = build_model(ModelSpec(name=name), n_features=N_FEATURES, seed=0)

    assert ModuleValidator.validate(model, strict=False) == []


def test_mlp_architecture_follows_hyperparameters() -> None:
    model = build_model(spec(hidden=[8, 4], activation="tanh"), n_features=N_FEATURES, seed=0)

    assert parameter_count(model) == (N_FEATURES * 8 + 8) + (8 * 4 + 4) + (4 + 1)
    assert sum(isinstance(module, nn.Tanh) for module in model.modules()) == 2
    assert parameter_count(build_model(ModelSpec("logistic_regression"), n_features=3, seed=0)) == 4


def test_initialisation_is_deterministic_per_seed() -> None:
    first = get_flat_parameters(build_model(spec(), n_features=N_FEATURES, seed=11))
    again = get_flat_parameters(build_model(spec(), n_features=N_FEATURES, seed=11))
    other = get_flat_parameters(build_model(spec(), n_features=N_FEATURES, seed=12))

    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_building_a_model_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)

    build_model(spec(), n_features=N_FEATURES, seed=5)

    torch.testing.assert_close(torch.rand(3), expected)


def test_building_a_model_seeds_no_gpu_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    def seed_every_gpu(seed: int) -> None:
        raise AssertionError(f"seeded every GPU's generator with {seed}")

    monkeypatch.setattr(torch.cuda, "manual_seed_all", seed_every_gpu)

    build_model(spec(), n_features=N_FEATURES, seed=5)


def test_flat_parameters_follow_named_parameters_order() -> None:
    model = build_model(spec(hidden=[3]), n_features=N_FEATURES, seed=0)

    flat = get_flat_parameters(model)

    assert flat.dtype == np.float64
    assert flat.shape == (parameter_count(model),)
    expected = torch.cat([p.detach().flatten() for _, p in model.named_parameters()])
    np.testing.assert_array_equal(flat, expected.double().numpy())


def test_set_flat_parameters_round_trips() -> None:
    source = build_model(spec(hidden=[6, 3]), n_features=N_FEATURES, seed=1)
    target = build_model(spec(hidden=[6, 3]), n_features=N_FEATURES, seed=2)
    inputs = torch.rand(4, N_FEATURES)

    set_flat_parameters(target, get_flat_parameters(source))

    np.testing.assert_array_equal(get_flat_parameters(target), get_flat_parameters(source))
    torch.testing.assert_close(target(inputs), source(inputs))


def test_set_flat_parameters_rejects_the_wrong_length() -> None:
    model = build_model(ModelSpec("logistic_regression"), n_features=N_FEATURES, seed=0)

    with pytest.raises(ValueError, match=r"expected a flat vector of 8 values.*\(9 values\)"):
        set_flat_parameters(model, np.zeros(9))


def test_set_flat_parameters_rejects_non_finite_values() -> None:
    model = build_model(ModelSpec("logistic_regression"), n_features=N_FEATURES, seed=0)
    values = np.zeros(parameter_count(model))
    values[3] = np.nan

    with pytest.raises(ValueError, match="NaN or infinite"):
        set_flat_parameters(model, values)
