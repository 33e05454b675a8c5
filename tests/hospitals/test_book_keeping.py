import pytest
import torch
from torch import nn

from hospitals.book_keeping import BookKeepingClipper, book_keeping_layers

MAX_GRAD_NORM = 1.0


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 4, bias=False), nn.Tanh(), nn.Linear(4, 1)
    )


def summed_loss(model: nn.Module, rows: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(
        model(rows).squeeze(1), labels, reduction="sum"
    )


def clipped_sum_row_by_row(
    model: nn.Module, rows: torch.Tensor, labels: torch.Tensor
) -> list[torch.Tensor]:
    """Σ_i min(1, C / (‖g_i‖ + 1e-6)) g_i, each g_i from a backward pass of row i alone."""
    parameters = list(model.parameters())
    total = [torch.zeros_like(parameter) for parameter in parameters]
    for row, label in zip(rows, labels, strict=True):
        gradients = torch.autograd.grad(summed_loss(model, row[None], label[None]), parameters)
        norm = torch.sqrt(sum(gradient.square().sum() for gradient in gradients))
        factor = min(1.0, MAX_GRAD_NORM / (float(norm) + 1e-6))
        for accumulated, gradient in zip(total, gradients, strict=True):
            accumulated += factor * gradient
    return total


def test_the_clipped_sum_is_that_of_each_rows_own_gradient_clipped() -> None:
    model = mlp()
    rows = torch.randn(12, 5) * torch.linspace(0.1, 10, 12)[:, None]  # some clip, some do not
    labels = (torch.arange(12) % 2).float()
    expected = clipped_sum_row_by_row(model, rows, labels)
    clipper = BookKeepingClipper(book_keeping_layers(model) or [], max_grad_norm=MAX_GRAD_NORM)

    clipper.backward(summed_loss(model, rows, labels))

    for parameter, wanted in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(parameter.grad, wanted, rtol=1e-5, atol=1e-6)


def test_an_empty_batch_clips_to_zero_gradients() -> None:
    model = mlp()
    clipper = BookKeepingClipper(book_keeping_layers(model) or [], max_grad_norm=MAX_GRAD_NORM)

    clipper.backward(summed_loss(model, torch.empty(0, 5), torch.empty(0)))

    for parameter in model.parameters():
        assert parameter.grad is not None
        assert torch.equal(parameter.grad, torch.zeros_like(parameter))


class RowMixer(nn.Module):
    """Subtracts the batch mean: each row's output depends on every other row."""

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return rows - rows.mean(dim=0)


@pytest.mark.parametrize(
    "model",
    [
        nn.Sequential(nn.Linear(5, 8), nn.LayerNorm(8), nn.Linear(8, 1)),  # a non-linear layer's
        nn.Sequential(nn.Linear(5, 8), RowMixer(), nn.Linear(8, 1)),  # a module it does not know
        nn.Sequential(nn.ReLU()),  # nothing to train
    ],
    ids=["layer norm", "unknown module", "no layer"],
)
def test_book_keeping_refuses_models_it_cannot_clip(model: nn.Module) -> None:
    assert book_keeping_layers(model) is None


def test_book_keeping_refuses_a_model_with_a_frozen_parameter() -> None:
    model = mlp()
    model[0].bias.requires_grad_(False)
    assert book_keeping_layers(model) is None


def test_book_keeping_finds_the_layers_in_order() -> None:
    model = mlp()
    assert book_keeping_layers(model) == [model[0], model[2], model[4]]


def test_a_layer_applied_twice_in_one_pass_is_refused() -> None:
    layer = nn.Linear(3, 3)
    BookKeepingClipper([layer], max_grad_norm=MAX_GRAD_NORM)
    with pytest.raises(ValueError, match="applied once per batch"):
        layer(layer(torch.randn(2, 3)))


def test_a_layer_fed_more_than_rows_of_features_is_refused() -> None:
    layer = nn.Linear(3, 1)
    BookKeepingClipper([layer], max_grad_norm=MAX_GRAD_NORM)
    with pytest.raises(ValueError, match=r"\(rows, features\)"):
        layer(torch.randn(2, 4, 3))


def test_a_backward_without_a_forward_pass_is_refused() -> None:
    model = mlp()
    clipper = BookKeepingClipper(book_keeping_layers(model) or [], max_grad_norm=MAX_GRAD_NORM)
    loss = summed_loss(model, torch.randn(3, 5), torch.ones(3))
    clipper.backward(loss)

    with pytest.raises(RuntimeError, match="one forward pass"):
        clipper.backward(loss)


def test_remove_takes_the_hooks_off() -> None:
    model = mlp()
    clipper = BookKeepingClipper(book_keeping_layers(model) or [], max_grad_norm=MAX_GRAD_NORM)
    model(torch.randn(2, 5))

    clipper.remove()

    assert not any(module._forward_hooks for module in model.modules())
    model(torch.randn(2, 5))  # a second pass without a backward: refused while hooked
