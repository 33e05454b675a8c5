import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from hospitals.evaluation import Metrics, evaluate, roc_auc


def identity_logit_model() -> nn.Linear:
    """logit = x: hand-checkable losses and rankings."""
    model = nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(0.0)
    return model


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_metrics_on_a_hand_checked_example() -> None:
    features = np.array([[2.0], [-1.0], [0.5], [-3.0]], dtype=np.float32)
    labels = np.array([1, 1, 0, 0])

    metrics = evaluate(identity_logit_model(), features=features, labels=labels)

    # BCE with logits: -log σ(x) = softplus(-x) for positives, softplus(x) for negatives.
    expected_loss = (softplus(-2.0) + softplus(1.0) + softplus(0.5) + softplus(-3.0)) / 4
    assert metrics.loss == pytest.approx(expected_loss, rel=1e-6)  # ≈ 0.6157
    # Predicted 1 where x ≥ 0: [1, 0, 1, 0] against [1, 1, 0, 0].
    assert metrics.accuracy == 0.5
    # Positive/negative pairs ranked right: (2, 0.5), (2, -3), (-1, -3); wrong: (-1, 0.5).
    assert metrics.roc_auc == pytest.approx(0.75)
    assert metrics.n == 4


def test_a_logit_of_zero_counts_as_class_one() -> None:
    features = np.array([[0.0], [-1.0]], dtype=np.float32)
    metrics = evaluate(identity_logit_model(), features=features, labels=np.array([1, 0]))
    assert metrics.accuracy == 1.0


def test_single_class_labels_have_no_auc() -> None:
    features = np.array([[1.0], [2.0], [-1.0]], dtype=np.float32)

    metrics = evaluate(identity_logit_model(), features=features, labels=np.array([1, 1, 1]))

    assert metrics.roc_auc is None
    assert metrics.accuracy == pytest.approx(2 / 3)
    assert metrics.to_dict() == {
        "loss": metrics.loss,
        "accuracy": metrics.accuracy,
        "roc_auc": None,
        "n": 3,
    }


def test_metrics_serialise_to_plain_values() -> None:
    metrics = Metrics(loss=0.25, accuracy=0.75, roc_auc=0.8, n=10)
    assert metrics.to_dict() == {"loss": 0.25, "accuracy": 0.75, "roc_auc": 0.8, "n": 10}


@pytest.mark.parametrize("training", [True, False])
def test_evaluate_restores_the_mode_and_leaves_no_gradients(training: bool) -> None:
    model = nn.Sequential(nn.Linear(1, 4), nn.Dropout(0.5), nn.Linear(4, 1))
    model.train(training)
    features = np.linspace(-1, 1, 20, dtype=np.float32).reshape(-1, 1)
    labels = (features[:, 0] > 0).astype(np.int64)

    first = evaluate(model, features=features, labels=labels)
    second = evaluate(model, features=features, labels=labels)

    assert model.training is training
    assert first == second  # eval mode: dropout off, so repeated evaluations agree
    assert all(parameter.grad is None for parameter in model.parameters())


def test_models_with_one_dimensional_output_are_accepted() -> None:
    class Flat(nn.Module):
        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            return inputs[:, 0]

    features = np.array([[1.0], [-1.0]], dtype=np.float32)
    assert evaluate(Flat(), features=features, labels=np.array([1, 0])).accuracy == 1.0


@pytest.mark.parametrize(
    ("features", "labels", "message"),
    [
        (np.zeros((3, 1)), np.array([0, 1]), "3 rows but labels have 2"),
        (np.zeros((2, 1)), np.array([0, 2]), "0 or 1"),
        (np.zeros(2), np.array([0, 1]), "2-D"),
        (np.array([[np.nan], [0.0]]), np.array([0, 1]), "NaN"),
        (np.zeros((0, 1)), np.zeros(0), "no rows"),
    ],
)
def test_bad_inputs_are_refused(features: np.ndarray, labels: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate(identity_logit_model(), features=features, labels=labels)


def test_models_with_several_outputs_are_refused() -> None:
    with pytest.raises(ValueError, match="one logit per row"):
        evaluate(nn.Linear(1, 2), features=np.zeros((2, 1)), labels=np.array([0, 1]))


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_is_sklearns_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = (rng.random(80) < 0.3).astype(np.float32)
    scores = np.round(rng.normal(size=80), 1).astype(np.float32)  # rounded: many ties
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1]])
def test_roc_auc_of_one_class_is_undefined(labels: list[int]) -> None:
    assert roc_auc(np.array(labels), np.arange(len(labels), dtype=np.float32)) is None
