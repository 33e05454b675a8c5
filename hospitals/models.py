"""The vetted model catalog: a study names a model and its hyperparameters, never code.

Hospitals only build architectures listed in ``CATALOG``, so joining a study never means running
code supplied by the researcher. Adding a model is adding one ``CatalogEntry``. Every model maps
``(batch, n_features)`` to logits of shape ``(batch,)`` for binary classification and avoids
layers Opacus cannot train with per-sample gradients (no BatchNorm).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn


class ModelSpecError(ValueError):
    """A model specification names an unknown model or has invalid hyperparameters."""


Validator = Callable[[str, object], Any]
Builder = Callable[[Mapping[str, Any], int], nn.Module]


@dataclass(frozen=True)
class Hyperparameter:
    """One hyperparameter of a catalog entry.

    ``validate(name, value)`` returns the canonical, hashable value or raises ``ModelSpecError``.
    """

    default: Any
    validate: Validator
    description: str


@dataclass(frozen=True)
class CatalogEntry:
    """``build(hyperparameters, n_features)`` receives every hyperparameter, defaults filled in."""

    description: str
    build: Builder
    hyperparameters: Mapping[str, Hyperparameter] = field(default_factory=dict)


class FrozenParams(Mapping[str, Any]):
    """A read-only, hashable mapping, so a ``ModelSpec`` can be hashed and used as a key."""

    def __init__(self, items: Mapping[str, Any]) -> None:
        self._items = dict(sorted(items.items()))

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(tuple(self._items.items()))

    def __repr__(self) -> str:
        return f"FrozenParams({self._items!r})"


@dataclass(frozen=True)
class ModelSpec:
    """A catalog model plus validated hyperparameters (defaults filled in, so equal specs compare
    and serialise equal whether or not a default was spelled out)."""

    name: str
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        entry = catalog_entry(self.name)
        canonical = _validate_hyperparameters(self.name, entry, self.hyperparameters)
        object.__setattr__(self, "hyperparameters", FrozenParams(canonical))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        if not isinstance(data, Mapping):
            raise ModelSpecError(f"a model spec must be an object, got {type(data).__name__}")
        unknown = sorted(str(key) for key in data if key not in {"name", "hyperparameters"})
        if unknown:
            raise ModelSpecError(
                f"unknown model spec key(s) {', '.join(unknown)}; allowed: hyperparameters, name"
            )
        name = data.get("name")
        if not isinstance(name, str):
            raise ModelSpecError(f"model spec 'name' must be a string, got {name!r}")
        hyperparameters = data.get("hyperparameters", {})
        if not isinstance(hyperparameters, Mapping):
            raise ModelSpecError(
                f"'hyperparameters' of model '{name}' must be an object, "
                f"got {type(hyperparameters).__name__}"
            )
        return cls(name=name, hyperparameters=hyperparameters)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "hyperparameters": {
                key: _to_json_value(value) for key, value in self.hyperparameters.items()
            },
        }


def catalog_entry(name: str) -> CatalogEntry:
    try:
        return CATALOG[name]
    except KeyError:
        raise ModelSpecError(
            f"unknown model {name!r}; the catalog has: {', '.join(sorted(CATALOG))}"
        ) from None


def build_model(spec: ModelSpec, *, n_features: int, seed: int) -> nn.Module:
    """Build ``spec`` for ``n_features`` inputs, initialised deterministically from ``seed``.

    The global torch RNG is left as it was, so building a model does not perturb training.
    """
    if n_features < 1:
        raise ValueError(f"n_features must be at least 1, got {n_features}")
    entry = catalog_entry(spec.name)
    # Models are built on the CPU: only its generator is seeded, and restored. torch.manual_seed
    # would seed every GPU's too, which fork_rng(devices=[]) does not restore.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return entry.build(spec.hyperparameters, n_features)


def parameter_count(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def get_flat_parameters(model: nn.Module) -> npt.NDArray[np.float64]:
    """All parameters as one float64 vector, concatenated in ``named_parameters()`` order."""
    chunks = [
        parameter.detach().cpu().numpy().astype(np.float64).ravel()
        for _, parameter in model.named_parameters()
    ]
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float64)


def set_flat_parameters(model: nn.Module, values: npt.NDArray[np.floating[Any]]) -> None:
    """Load a vector produced by ``get_flat_parameters`` (of a same-shaped model) into ``model``."""
    expected = parameter_count(model)
    if values.ndim != 1 or values.shape[0] != expected:
        raise ValueError(
            f"expected a flat vector of {expected} values for this model, got shape {values.shape} "
            f"({values.size} values)"
        )
    if not np.all(np.isfinite(values)):
        raise ValueError("parameter vector contains NaN or infinite values; refusing to load it")
    offset = 0
    with torch.no_grad():
        for _, parameter in model.named_parameters():
            size = parameter.numel()
            chunk = torch.tensor(values[offset : offset + size], dtype=parameter.dtype)
            parameter.copy_(chunk.reshape(parameter.shape))
            offset += size


def _validate_hyperparameters(
    model_name: str, entry: CatalogEntry, given: Mapping[str, Any]
) -> dict[str, Any]:
    unknown = sorted(str(key) for key in given if key not in entry.hyperparameters)
    if unknown:
        allowed = ", ".join(sorted(entry.hyperparameters)) or "none"
        raise ModelSpecError(
            f"model '{model_name}' has no hyperparameter(s) {', '.join(unknown)}; "
            f"allowed: {allowed}"
        )
    return {
        name: parameter.validate(name, given.get(name, parameter.default))
        for name, parameter in entry.hyperparameters.items()
    }


def _to_json_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _int_list(*, min_length: int, max_length: int, min_value: int, max_value: int) -> Validator:
    def validate(name: str, value: object) -> tuple[int, ...]:
        if not isinstance(value, list | tuple) or not all(
            isinstance(item, int) and not isinstance(item, bool) for item in value
        ):
            raise ModelSpecError(
                f"hyperparameter '{name}' must be a list of integers, got {value!r}"
            )
        if not min_length <= len(value) <= max_length:
            raise ModelSpecError(
                f"hyperparameter '{name}' must have {min_length} to {max_length} entries, "
                f"got {len(value)}"
            )
        out_of_range = [item for item in value if not min_value <= item <= max_value]
        if out_of_range:
            raise ModelSpecError(
                f"hyperparameter '{name}' entries must be between {min_value} and {max_value}, "
                f"got {out_of_range}"
            )
        return tuple(value)

    return validate


def _one_of(*choices: str) -> Validator:
    def validate(name: str, value: object) -> str:
        if value not in choices or not isinstance(value, str):
            raise ModelSpecError(
                f"hyperparameter '{name}' must be one of {', '.join(choices)}, got {value!r}"
            )
        return value

    return validate


# The nonlinearities an MLP may use. DP training clips per-row gradients by book-keeping only
# through modules it knows (hospitals.book_keeping.ROW_WISE_MODULES); tests check every one here.
ACTIVATIONS: Mapping[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}


def _logits(*layers: nn.Module) -> nn.Sequential:
    # Flatten(start_dim=0) turns the (batch, 1) output into (batch,) logits, as BCEWithLogitsLoss
    # expects, without a custom module that Opacus would have to know about.
    return nn.Sequential(*layers, nn.Flatten(start_dim=0))


def _build_logistic_regression(_: Mapping[str, Any], n_features: int) -> nn.Module:
    return _logits(nn.Linear(n_features, 1))


def _build_mlp(hyperparameters: Mapping[str, Any], n_features: int) -> nn.Module:
    activation = ACTIVATIONS[hyperparameters["activation"]]
    layers: list[nn.Module] = []
    width = n_features
    for hidden in hyperparameters["hidden"]:
        layers += [nn.Linear(width, hidden), activation()]
        width = hidden
    return _logits(*layers, nn.Linear(width, 1))


CATALOG: Mapping[str, CatalogEntry] = {
    "logistic_regression": CatalogEntry(
        description="Linear model on the encoded features; logits of P(label = 1).",
        build=_build_logistic_regression,
    ),
    "mlp": CatalogEntry(
        description="Fully connected network with one to four hidden layers.",
        build=_build_mlp,
        hyperparameters={
            "hidden": Hyperparameter(
                default=(32,),
                validate=_int_list(min_length=1, max_length=4, min_value=1, max_value=1024),
                description="Width of each hidden layer, input side first.",
            ),
            "activation": Hyperparameter(
                default="relu",
                validate=_one_of(*ACTIVATIONS),
                description="Nonlinearity after each hidden layer.",
            ),
        },
    ),
}
