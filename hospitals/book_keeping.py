"""Per-sample gradient clipping by book-keeping, for models built of linear layers only.

Row i's gradient for a `nn.Linear` fed (rows, features) inputs is an outer product: the gradient
of row i's loss at the layer's output, dz_i, times the layer's input a_i (plus dz_i for the
bias). Hence ‖g_i‖² = ‖dz_i‖² (‖a_i‖² + 1), the norm Opacus's ghost clipping computes
(`compute_linear_norm_sample`), and the clipped sum Σ_i c_i g_i = (c ⊙ dz)ᵀ a, one matrix product
per layer. One backward pass to the layers' outputs gives every dz_i: no row's gradient is ever
materialised, and no second backward pass of the clip-weighted loss runs, where Opacus's ghost
clipping runs one (the "book-keeping" of Bu et al. 2023, "Differentially private optimization
on large model at small cost").

The identity holds where row i's loss reaches each layer only through row i's own output, i.e.
every module works row by row: `book_keeping_layers` accepts only modules known to.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from opacus.optimizers import DPOptimizerFastGradientClipping
from torch import nn
from torch.utils.hooks import RemovableHandle

# Modules that map each row to its own output, holding no parameter other than a Linear's: the
# catalog's layers, activations and final Flatten (of (rows, 1) logits).
ROW_WISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.Sequential,
    nn.Linear,
    nn.ReLU,
    nn.Tanh,
    nn.Flatten,
)
# Opacus's clip factor is max_grad_norm / (‖g_i‖ + this), capped at 1.
_NORM_GUARD = 1e-6


def book_keeping_layers(model: nn.Module) -> list[nn.Linear] | None:
    """`model`'s linear layers if book-keeping can clip its per-row gradients: it is built of
    `ROW_WISE_MODULES` only and trains every parameter. None otherwise."""
    modules = list(model.modules())
    if not all(type(module) in ROW_WISE_MODULES for module in modules):
        return None
    if not all(parameter.requires_grad for parameter in model.parameters()):
        return None
    return [module for module in modules if isinstance(module, nn.Linear)] or None


class BookKeepingClipper:
    """Sets every parameter's `.grad` to the sum over a batch's rows of each row's gradient,
    clipped to norm `max_grad_norm` over all parameters, as Opacus clips it.

    While it lives, each layer's forward hook keeps the layer's input and output; `backward`
    uses them once per batch. `remove` takes the hooks off."""

    def __init__(self, layers: Sequence[nn.Linear], *, max_grad_norm: float) -> None:
        self._layers = tuple(layers)
        self._max_grad_norm = max_grad_norm
        self._kept: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
        self._hooks: list[RemovableHandle] = [
            layer.register_forward_hook(self._keep) for layer in self._layers
        ]

    def _keep(
        self, layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
    ) -> None:
        (rows,) = inputs
        if rows.dim() != 2 or layer in self._kept:
            raise ValueError(
                "book-keeping clips a linear layer applied once per batch to (rows, features)"
            )
        self._kept[layer] = (rows.detach(), output)

    def backward(self, summed_loss: torch.Tensor) -> None:
        """`summed_loss`: the sum over the batch's rows of each row's loss, from the forward
        pass the hooks just saw."""
        if len(self._kept) != len(self._layers):
            self._kept.clear()
            raise RuntimeError("book-keeping needs one forward pass through every layer first")
        inputs, outputs = zip(*(self._kept.pop(layer) for layer in self._layers), strict=True)
        output_gradients = torch.autograd.grad(summed_loss, outputs)
        factors = self._clip_factors(inputs, output_gradients)
        for layer, rows, gradient in zip(self._layers, inputs, output_gradients, strict=True):
            clipped = gradient * factors[:, None]
            layer.weight.grad = clipped.T @ rows
            if layer.bias is not None:
                layer.bias.grad = clipped.sum(dim=0)

    def _clip_factors(
        self, inputs: Sequence[torch.Tensor], output_gradients: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """Each row's clip factor, min(1, C / (‖g_i‖ + 1e-6)), as Opacus computes it. In place
        on fresh tensors, in few operations: a small model's step is mostly their overhead."""
        squared_norms: torch.Tensor = functools.reduce(
            torch.Tensor.add_,
            (
                torch.linalg.vecdot(gradient, gradient).mul_(
                    torch.linalg.vecdot(rows, rows).add_(1.0 if layer.bias is not None else 0.0)
                )
                for layer, rows, gradient in zip(
                    self._layers, inputs, output_gradients, strict=True
                )
            ),
        )
        return (self._max_grad_norm / squared_norms.sqrt_().add_(_NORM_GUARD)).clamp_(max=1.0)

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._kept.clear()


class ClippedSumOptimizer(DPOptimizerFastGradientClipping):  # type: ignore[misc]  # untyped
    """Opacus's optimizer for gradients that come to it already clipped and summed, as ghost
    clipping's and `BookKeepingClipper`'s do: it noises, scales, accounts and steps as Opacus
    does. Opacus deep-copies each `.grad` into `summed_grad` first (~20 µs a parameter, up to a
    tenth of a small model's step); this takes the tensor over, as `add_noise` then sets
    `.grad` to a new one anyway."""

    def accumulate(self) -> None:
        for parameter in self.params:
            if parameter.summed_grad is None:
                parameter.summed_grad = parameter.grad
            else:
                parameter.summed_grad.add_(parameter.grad)
            parameter.grad = None
