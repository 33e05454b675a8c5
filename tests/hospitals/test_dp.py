import copy
from typing import Any

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp
from opacus.accountants.utils import get_noise_multiplier
from scipy.optimize import brentq
from scipy.stats import norm
from torch import nn

from hospitals import dp as dp_module
from hospitals.dp import (
    Accountant,
    DpSettings,
    GradSampleMode,
    PrivacyStep,
    RdpCurves,
    TrainingSettings,
    epsilon_of,
    grad_sample_mode_for,
    plan_noise_multiplier,
    plan_round,
    sample_rate_for,
    steps_per_round,
    train_dp,
    train_plain,
)
from hospitals.evaluation import evaluate
from hospitals.models import ACTIVATIONS, CATALOG, ModelSpec, build_model

DELTA = 1e-5
N_FEATURES = 4


def separable_data(n_rows: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n_rows, N_FEATURES)).astype(np.float32)
    labels = (features @ np.array([2.0, -1.0, 0.5, 1.5]) > 0).astype(np.int64)
    return features, labels


def logistic_model(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(N_FEATURES, 1)


def mlp_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(N_FEATURES, 8), nn.Tanh(), nn.Linear(8, 1))


MODELS = {"logistic": logistic_model, "mlp": mlp_model}


def weights_of(model: nn.Module) -> list[torch.Tensor]:
    return [parameter.detach().clone() for parameter in model.parameters()]


def same_weights(left: nn.Module, right: nn.Module) -> bool:
    return all(torch.equal(a, b) for a, b in zip(weights_of(left), weights_of(right), strict=True))


def private_training(
    model: nn.Module,
    *,
    n_rows: int = 300,
    training: TrainingSettings | None = None,
    noise_multiplier: float = 0.8,
    max_grad_norm: float = 1.0,
    seed: int = 7,
    accountant: Accountant = Accountant.RDP,
    grad_sample_mode: GradSampleMode = GradSampleMode.GHOST,
    device: str = "cpu",
) -> PrivacyStep:
    features, labels = separable_data(n_rows)
    return train_dp(
        model,
        features=features,
        labels=labels,
        training=training or TrainingSettings(local_epochs=2, batch_size=30, learning_rate=0.5),
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        delta=DELTA,
        seed=seed,
        accountant=accountant,
        grad_sample_mode=grad_sample_mode,
        device=device,
    )


# --- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"target_epsilon": 0.0}, "target_epsilon"),
        ({"target_epsilon": float("inf")}, "target_epsilon"),
        ({"delta": 0.0}, "delta"),
        ({"delta": 1.0}, "delta"),
        ({"max_grad_norm": -1.0}, "max_grad_norm"),
        ({"accountant": "gdp"}, "gdp"),
    ],
)
def test_dp_settings_reject_bad_values(arguments: dict[str, object], named: str) -> None:
    valid: dict[str, object] = {"target_epsilon": 3.0, "delta": DELTA, "max_grad_norm": 1.0}
    with pytest.raises(ValueError, match=named):
        DpSettings(**{**valid, **arguments})  # type: ignore[arg-type]


def test_dp_settings_accept_accountant_names_from_configs() -> None:
    settings = DpSettings(target_epsilon=3.0, delta=DELTA, max_grad_norm=1.0, accountant="prv")  # type: ignore[arg-type]
    assert settings.accountant is Accountant.PRV


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"local_epochs": 0}, "local_epochs"),
        ({"local_epochs": True}, "local_epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"learning_rate": 0.0}, "learning_rate"),
    ],
)
def test_training_settings_reject_bad_values(arguments: dict[str, object], named: str) -> None:
    valid: dict[str, object] = {"local_epochs": 1, "batch_size": 10, "learning_rate": 0.1}
    with pytest.raises(ValueError, match=named):
        TrainingSettings(**{**valid, **arguments})  # type: ignore[arg-type]


# --- sampling arithmetic ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_rows", "batch_size", "sample_rate"),
    [(1000, 100, 0.1), (1000, 64, 1 / 16), (40, 50, 1.0), (40, 40, 1.0), (7, 1, 1 / 7)],
)
def test_sample_rate_is_one_over_the_plain_loader_length(
    n_rows: int, batch_size: int, sample_rate: float
) -> None:
    assert sample_rate_for(n_rows=n_rows, batch_size=batch_size) == sample_rate


def test_sample_rate_rejects_empty_data() -> None:
    with pytest.raises(ValueError, match="n_rows"):
        sample_rate_for(n_rows=0, batch_size=10)


@pytest.mark.parametrize(
    ("n_rows", "batch_size", "local_epochs", "expected_steps"),
    [
        (300, 30, 2, 20),
        (1000, 64, 1, 16),
        # Opacus runs int(1 / (1 / 93)) = 92 batches per epoch: floating point, not 93.
        (93, 1, 1, 92),
    ],
)
def test_train_dp_takes_exactly_the_steps_planned(
    n_rows: int, batch_size: int, local_epochs: int, expected_steps: int
) -> None:
    training = TrainingSettings(local_epochs=local_epochs, batch_size=batch_size, learning_rate=0.1)
    assert steps_per_round(n_rows=n_rows, training=training) == expected_steps

    spent = private_training(logistic_model(), n_rows=n_rows, training=training)

    assert spent.steps == expected_steps
    assert spent.sample_rate == sample_rate_for(n_rows=n_rows, batch_size=batch_size)
    assert spent.noise_multiplier == 0.8
    assert spent.delta == DELTA
    assert spent.accountant is Accountant.RDP


# --- accounting -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accountant", "expected_sigma"),
    # Measured with Opacus 1.6 for ε=3, δ=1e-5, q=0.1, 250 steps.
    [(Accountant.RDP, 2.568), (Accountant.PRV, 2.402)],
)
def test_planned_noise_lands_on_the_target_epsilon(
    accountant: Accountant, expected_sigma: float
) -> None:
    dp = DpSettings(target_epsilon=3.0, delta=DELTA, max_grad_norm=1.0, accountant=accountant)

    sigma = plan_noise_multiplier(dp=dp, sample_rate=0.1, total_steps=250)
    planned = PrivacyStep(
        sample_rate=0.1, noise_multiplier=sigma, steps=250, delta=DELTA, accountant=accountant
    )
    epsilon = epsilon_of([planned], delta=DELTA, accountant=accountant)

    assert 0.99 * 3.0 <= epsilon <= 3.0
    assert sigma == pytest.approx(expected_sigma, rel=0.01)


def test_planning_refuses_a_budget_no_noise_can_meet() -> None:
    dp = DpSettings(target_epsilon=0.01, delta=DELTA, max_grad_norm=1.0)
    with pytest.raises(ValueError, match="raise the budget"):
        plan_noise_multiplier(dp=dp, sample_rate=1.0, total_steps=1000)


def test_planning_equal_inputs_again_does_not_ask_the_accountant_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    searches: list[dict[str, object]] = []
    search = dp_module.search_noise_multiplier

    def counted(**arguments: Any) -> float:
        searches.append(arguments)
        return search(**arguments)  # type: ignore[arg-type]

    monkeypatch.setattr(dp_module, "search_noise_multiplier", counted)

    def plan(rounds: int) -> PrivacyStep:
        # Inputs no other test plans, and fresh (equal, not identical) settings every call.
        return plan_round(
            privacy=DpSettings(target_epsilon=2.345, delta=DELTA, max_grad_norm=1.0),
            training=TrainingSettings(local_epochs=1, batch_size=25, learning_rate=0.1),
            rounds=rounds,
            n_rows=500,
        )

    first = plan(rounds=7)
    assert plan(rounds=7) == first
    assert len(searches) == 1
    assert plan(rounds=8).noise_multiplier > first.noise_multiplier  # more steps, more noise
    assert len(searches) == 2


@pytest.mark.parametrize(
    ("target_epsilon", "sample_rate", "total_steps"),
    [(0.5, 0.01, 2000), (1.0, 1.0, 1), (3.0, 0.1, 250), (8.0, 0.5, 100), (30.0, 0.001, 10)],
)
def test_the_search_lands_in_the_band_where_opacus_does(
    target_epsilon: float, sample_rate: float, total_steps: int
) -> None:
    dp = DpSettings(target_epsilon=target_epsilon, delta=DELTA, max_grad_norm=1.0)

    sigma = dp_module.search_noise_multiplier(
        dp=dp, sample_rate=sample_rate, total_steps=total_steps
    )

    epsilon = dp_module.spent_by(
        dp, noise_multiplier=sigma, sample_rate=sample_rate, steps=total_steps
    )
    assert 0.995 * target_epsilon <= epsilon <= target_epsilon
    opacus_sigma = get_noise_multiplier(
        target_epsilon=target_epsilon,
        target_delta=DELTA,
        sample_rate=sample_rate,
        steps=total_steps,
        epsilon_tolerance=0.005 * target_epsilon,
    )
    assert sigma == pytest.approx(opacus_sigma, rel=0.01)


def test_the_search_asks_for_a_third_of_the_epsilons_opacus_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dp = DpSettings(target_epsilon=3.0, delta=DELTA, max_grad_norm=1.0)
    asked: list[str] = []
    ours, opacus = dp_module.epsilon_of, RDPAccountant.get_epsilon

    def our_epsilon(*arguments: Any, **keywords: Any) -> float:
        asked.append("ours")
        return ours(*arguments, **keywords)

    def opacus_epsilon(self: RDPAccountant, *arguments: Any, **keywords: Any) -> float:
        asked.append("opacus")
        return opacus(self, *arguments, **keywords)

    monkeypatch.setattr(dp_module, "epsilon_of", our_epsilon)
    monkeypatch.setattr(RDPAccountant, "get_epsilon", opacus_epsilon)
    dp_module.search_noise_multiplier(dp=dp, sample_rate=0.1, total_steps=250)
    get_noise_multiplier(
        target_epsilon=3.0, target_delta=DELTA, sample_rate=0.1, steps=250, epsilon_tolerance=0.015
    )

    assert asked.count("ours") * 3 <= asked.count("opacus")
    # Started where RDP at the whole orders lands, the accountant's own pass needs few steps:
    # from σ = 4 it took 4 here.
    assert asked.count("ours") <= 2


@pytest.mark.parametrize(
    ("noise_multiplier", "sample_rate", "steps"),
    [(0.6, 0.2, 20), (1.1, 256 / 60000, 14000), (2.5, 0.1, 250), (8.0, 1.0, 1)],
)
def test_whole_order_rdp_never_spends_less_than_the_accountants(
    noise_multiplier: float, sample_rate: float, steps: int
) -> None:
    rough = dp_module._whole_order_epsilon(
        noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps, delta=DELTA
    )

    for accountant in Accountant:
        dp = DpSettings(target_epsilon=1.0, delta=DELTA, max_grad_norm=1.0, accountant=accountant)
        exact = dp_module.spent_by(
            dp, noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps
        )
        assert exact <= rough


def test_the_search_still_lands_in_the_band_when_its_guess_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dp_module, "_whole_order_epsilon", lambda **_: float("nan"))
    dp = DpSettings(target_epsilon=3.0, delta=DELTA, max_grad_norm=1.0)

    sigma = dp_module.search_noise_multiplier(dp=dp, sample_rate=0.1, total_steps=250)

    epsilon = dp_module.spent_by(dp, noise_multiplier=sigma, sample_rate=0.1, steps=250)
    assert 0.995 * 3.0 <= epsilon <= 3.0


def test_published_mnist_figure_is_reproduced() -> None:
    # Abadi et al. / TF-Privacy / Opacus README: q=256/60000, σ=1.1, 60 epochs, δ=1e-5, ε≈2.9-3.0
    # with the classic RDP conversion ε = min_α RDP(α) + log(1/δ)/(α-1). Opacus 1.6's get_epsilon
    # uses the tighter conversion of Balle et al. 2020 (Thm 21) and reports 2.60; PRV gives 2.39.
    sample_rate = 256 / 60000
    steps = int(60 / sample_rate)
    history = [
        PrivacyStep(
            sample_rate=sample_rate,
            noise_multiplier=1.1,
            steps=steps,
            delta=DELTA,
            accountant=Accountant.RDP,
        )
    ]
    orders = np.array(RDPAccountant.DEFAULT_ALPHAS)
    rdp = compute_rdp(q=sample_rate, noise_multiplier=1.1, steps=steps, orders=list(orders))
    classic = float(np.min(rdp + np.log(1 / DELTA) / (orders - 1)))

    assert steps == 14062
    assert classic == pytest.approx(3.01, abs=0.01)
    assert epsilon_of(history, delta=DELTA, accountant=Accountant.RDP) == pytest.approx(
        2.597, abs=0.005
    )
    assert epsilon_of(history, delta=DELTA, accountant=Accountant.PRV) == pytest.approx(
        2.39, abs=0.02
    )


def test_epsilon_of_composes_the_history() -> None:
    def step(steps: int, sigma: float = 1.0) -> PrivacyStep:
        return PrivacyStep(
            sample_rate=0.05,
            noise_multiplier=sigma,
            steps=steps,
            delta=DELTA,
            accountant=Accountant.RDP,
        )

    for accountant in Accountant:
        assert epsilon_of([], delta=DELTA, accountant=accountant) == 0.0
        whole = epsilon_of([step(200)], delta=DELTA, accountant=accountant)
        split = epsilon_of([step(120), step(80)], delta=DELTA, accountant=accountant)
        assert split == pytest.approx(whole, rel=1e-9)
        assert epsilon_of([step(100)], delta=DELTA, accountant=accountant) < whole
    mixed = epsilon_of([step(100), step(100, sigma=2.0)], delta=DELTA, accountant=Accountant.RDP)
    assert epsilon_of([step(100)], delta=DELTA, accountant=Accountant.RDP) < mixed < whole


def test_rdp_epsilon_is_exactly_opacus_rdp_accountant() -> None:
    history = [(0.9, 0.02, 750), (1.3, 0.05, 40), (0.9, 0.02, 250)]
    steps = [
        PrivacyStep(
            sample_rate=q, noise_multiplier=sigma, steps=n, delta=DELTA, accountant=Accountant.RDP
        )
        for sigma, q, n in history
    ]
    opacus = RDPAccountant()
    opacus.history = [(0.9, 0.02, 1000), (1.3, 0.05, 40)]

    first = epsilon_of(steps, delta=DELTA, accountant=Accountant.RDP)
    remembered = epsilon_of(steps, delta=DELTA, accountant=Accountant.RDP)

    assert first == remembered == opacus.get_epsilon(delta=DELTA)


def test_rdp_curves_pass_between_processes_exactly(monkeypatch) -> None:
    computing = RdpCurves()
    curve = computing.per_step(noise_multiplier=0.9, sample_rate=0.02)
    records = computing.computed_records()
    assert np.array_equal(
        curve,
        compute_rdp(q=0.02, noise_multiplier=0.9, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS),
    )

    receiving = RdpCurves()
    for record in records:
        receiving.remember(record)
    monkeypatch.setattr(dp_module, "compute_rdp", _must_not_compute)
    remembered = receiving.per_step(noise_multiplier=0.9, sample_rate=0.02)

    assert np.array_equal(remembered, curve)
    assert not remembered.flags.writeable
    # Only what a process computed itself goes on: remembered curves are not passed on again.
    assert receiving.computed_records() == []


def _must_not_compute(**kwargs: Any) -> None:
    raise AssertionError(f"computed a curve it was given: {kwargs}")


def curve_record(noise_multiplier: float, sample_rate: float, value: float) -> bytes:
    return RdpCurves.RECORD.pack(
        noise_multiplier, sample_rate, *[value] * len(RDPAccountant.DEFAULT_ALPHAS)
    )


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        (curve_record(0.9, 0.02, 0.1)[:-1], "bytes"),
        (curve_record(0.0, 0.02, 0.1), "noise_multiplier"),
        (curve_record(float("nan"), 0.02, 0.1), "noise_multiplier"),
        (curve_record(0.9, 1.5, 0.1), "sample_rate"),
        (curve_record(0.9, 0.02, float("nan")), "NaN"),
        (curve_record(0.9, 0.02, -0.1), "negative"),
    ],
)
def test_rdp_curves_refuse_a_record_that_is_not_a_curve(record: bytes, problem: str) -> None:
    curves = RdpCurves()
    with pytest.raises(ValueError, match=problem):
        curves.remember(record)
    assert len(curves) == 0


def test_rdp_curves_accept_an_order_without_a_bound() -> None:
    curves = RdpCurves()
    curves.remember(curve_record(0.3, 0.5, float("inf")))
    assert np.isinf(curves.per_step(noise_multiplier=0.3, sample_rate=0.5)).all()


def exact_gaussian_epsilon(*, noise_multiplier: float, steps: int, delta: float) -> float:
    """Tight ε of `steps` full-batch Gaussian steps (Balle & Wang 2018, Theorem 8)."""
    mu = np.sqrt(steps) / noise_multiplier

    def delta_at(epsilon: float) -> float:
        return float(
            norm.cdf(-epsilon / mu + mu / 2)
            - np.exp(epsilon) * norm.cdf(-epsilon / mu - mu / 2)
            - delta
        )

    return float(brentq(delta_at, 0.0, 100.0))


@pytest.mark.parametrize(("noise_multiplier", "steps"), [(2.0, 10), (5.0, 3)])
def test_full_batch_epsilon_bounds_the_exact_gaussian_value(
    noise_multiplier: float, steps: int
) -> None:
    # q = 1 (a dataset no larger than one batch) has a closed form to check both accountants by.
    exact = exact_gaussian_epsilon(noise_multiplier=noise_multiplier, steps=steps, delta=DELTA)
    history = [
        PrivacyStep(
            sample_rate=1.0,
            noise_multiplier=noise_multiplier,
            steps=steps,
            delta=DELTA,
            accountant=Accountant.PRV,
        )
    ]

    prv = epsilon_of(history, delta=DELTA, accountant=Accountant.PRV)
    rdp = epsilon_of(history, delta=DELTA, accountant=Accountant.RDP)

    assert exact <= prv <= exact + 0.02  # PRV returns an upper bound within its ε error
    assert exact <= rdp <= 1.2 * exact


def test_privacy_step_rejects_impossible_values() -> None:
    with pytest.raises(ValueError, match="sample_rate"):
        PrivacyStep(
            sample_rate=1.5, noise_multiplier=1.0, steps=1, delta=DELTA, accountant=Accountant.RDP
        )
    with pytest.raises(ValueError, match="steps"):
        PrivacyStep(
            sample_rate=0.1, noise_multiplier=1.0, steps=0, delta=DELTA, accountant=Accountant.RDP
        )


# --- training ---------------------------------------------------------------------------------


def test_train_dp_learns_separable_data() -> None:
    model = logistic_model()
    features, labels = separable_data(300)
    before = evaluate(model, features=features, labels=labels)

    private_training(model)

    after = evaluate(model, features=features, labels=labels)
    assert after.loss < 0.7 * before.loss
    assert after.accuracy > 0.85


def test_train_dp_is_deterministic_for_a_seed() -> None:
    first, second, other_seed = logistic_model(), logistic_model(), logistic_model()

    private_training(first, seed=11)
    private_training(second, seed=11)
    private_training(other_seed, seed=12)

    assert same_weights(first, second)
    assert not same_weights(first, other_seed)


def test_more_noise_gives_different_weights() -> None:
    quiet, noisy = logistic_model(), logistic_model()

    private_training(quiet, noise_multiplier=0.5)
    private_training(noisy, noise_multiplier=5.0)

    assert not same_weights(quiet, noisy)


@pytest.mark.parametrize("mode", list(GradSampleMode))
def test_train_dp_updates_the_callers_module_and_leaves_it_clean(mode: GradSampleMode) -> None:
    model = mlp_model()
    untouched = copy.deepcopy(model)
    model.eval()
    parameters_before = list(model.parameters())

    private_training(model, grad_sample_mode=mode)

    assert not same_weights(model, untouched)
    assert all(a is b for a, b in zip(model.parameters(), parameters_before, strict=True))
    assert not model.training  # the caller's mode is restored
    for parameter in model.parameters():
        assert vars(parameter) == {}  # no grad_sample, summed_grad, _norm_sample, ...
        assert parameter.grad is None
    for module, fresh in zip(model.modules(), untouched.modules(), strict=True):
        assert vars(module).keys() == vars(fresh).keys()  # no activations, hook lists, ...
        assert not module._forward_hooks and not module._backward_hooks
        assert module._is_full_backward_hook is fresh._is_full_backward_hook

    after_first_round = weights_of(model)
    # Opacus refuses to hook a module twice: this proves cleanup
    private_training(model, seed=8, grad_sample_mode=mode)
    assert not all(
        torch.equal(a, b) for a, b in zip(after_first_round, weights_of(model), strict=True)
    )


@pytest.mark.parametrize("mode", list(GradSampleMode))
def test_empty_poisson_batches_take_a_noise_only_step(mode: GradSampleMode, monkeypatch) -> None:
    training = TrainingSettings(local_epochs=5, batch_size=1, learning_rate=0.1)
    by_hooks = logistic_model()
    private_training(
        by_hooks, n_rows=4, training=training, seed=3, grad_sample_mode=GradSampleMode.HOOKS
    )
    batch_sizes: list[int] = []
    step = dp_module._PrivateTraining.step

    def recording(self: Any, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        batch_sizes.append(len(targets))
        step(self, inputs, targets)

    monkeypatch.setattr(dp_module._PrivateTraining, "step", recording)
    model = logistic_model()

    spent = private_training(model, n_rows=4, training=training, seed=3, grad_sample_mode=mode)

    assert 0 in batch_sizes  # Poisson sampling at q=1/4 did draw empty batches
    assert spent.steps == 20 == len(batch_sizes)
    # The same batches and noise draws as hooks, which Opacus steps through empty batches itself.
    for left, right in zip(weights_of(model), weights_of(by_hooks), strict=True):
        torch.testing.assert_close(left, right, rtol=1e-5, atol=1e-6)


def clipped_mean_gradient(
    model: nn.Module, *, features: np.ndarray, labels: np.ndarray, max_grad_norm: float
) -> tuple[list[torch.Tensor], int]:
    """DP-SGD's gradient without noise, row by row: each row's loss gradient scaled by Opacus'
    clip factor C / (‖g‖ + 1e-6) where that is below 1, summed, divided by the batch size.
    Also returns how many rows were clipped."""
    parameters = list(model.parameters())
    total = [torch.zeros_like(parameter) for parameter in parameters]
    clipped = 0
    for row, label in zip(torch.as_tensor(features), torch.as_tensor(labels), strict=True):
        loss = nn.functional.binary_cross_entropy_with_logits(
            model(row[None]).reshape(1), label.reshape(1).float()
        )
        gradients = torch.autograd.grad(loss, parameters)
        norm = float(torch.sqrt(sum(gradient.square().sum() for gradient in gradients)))
        scale = min(1.0, max_grad_norm / (norm + 1e-6))
        clipped += int(scale < 1.0)
        for accumulated, gradient in zip(total, gradients, strict=True):
            accumulated += scale * gradient
    return [accumulated / len(labels) for accumulated in total], clipped


@pytest.mark.parametrize("mode", list(GradSampleMode))
@pytest.mark.parametrize("architecture", list(MODELS))
def test_every_mode_steps_by_the_clipped_mean_gradient(
    architecture: str, mode: GradSampleMode
) -> None:
    # One step over every row (q = 1), learning rate 1 and negligible noise: the weights move by
    # minus the mean of the clipped per-row gradients, however Opacus computed the clipping.
    features, labels = separable_data(16)
    model = MODELS[architecture]()
    expected, clipped = clipped_mean_gradient(
        copy.deepcopy(model), features=features, labels=labels, max_grad_norm=1.0
    )
    before = weights_of(model)

    spent = train_dp(
        model,
        features=features,
        labels=labels,
        training=TrainingSettings(local_epochs=1, batch_size=16, learning_rate=1.0),
        noise_multiplier=1e-9,
        max_grad_norm=1.0,
        delta=DELTA,
        seed=0,
        accountant=Accountant.RDP,
        grad_sample_mode=mode,
    )

    assert 0 < clipped < len(labels)  # the bound binds for some rows, not all
    assert (spent.steps, spent.sample_rate) == (1, 1.0)
    for old, new, gradient in zip(before, weights_of(model), expected, strict=True):
        torch.testing.assert_close(old - new, gradient, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "mode", [mode for mode in GradSampleMode if mode is not GradSampleMode.HOOKS]
)
@pytest.mark.parametrize("architecture", list(MODELS))
def test_every_mode_trains_and_spends_as_hooks_do(architecture: str, mode: GradSampleMode) -> None:
    # Same seed: same Poisson batches and the same noise draws, so only rounding may differ.
    other, hooks = MODELS[architecture](), MODELS[architecture]()

    other_spent = private_training(other, grad_sample_mode=mode)
    hooks_spent = private_training(hooks, grad_sample_mode=GradSampleMode.HOOKS)

    assert other_spent == hooks_spent
    assert other_spent.steps == 20
    assert epsilon_of([other_spent], delta=DELTA, accountant=Accountant.RDP) == epsilon_of(
        [hooks_spent], delta=DELTA, accountant=Accountant.RDP
    )
    for left, right in zip(weights_of(other), weights_of(hooks), strict=True):
        torch.testing.assert_close(left, right, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("hidden", "batch_size", "expected"),
    [
        (64, 64, GradSampleMode.EXPANDED_WEIGHTS),  # 513 parameters: 32,832 per-sample values
        (512, 64, GradSampleMode.EXPANDED_WEIGHTS),  # 4,097 parameters: 262,208
        (2048, 64, GradSampleMode.GHOST),  # 16,385 parameters: 1,048,640
        (2048, 8, GradSampleMode.EXPANDED_WEIGHTS),  # 131,080: a small batch keeps them cheap
    ],
)
def test_beyond_book_keeping_the_mode_follows_the_size_of_a_steps_per_sample_gradients(
    hidden, batch_size, expected
):
    # A layer norm's parameters are not a linear layer's: book-keeping cannot clip this model.
    model = nn.Sequential(
        nn.Linear(N_FEATURES, hidden), nn.LayerNorm(hidden), nn.ReLU(), nn.Linear(hidden, 1)
    )
    assert grad_sample_mode_for(model, batch_size=batch_size) is expected


# Every catalog model at its defaults, and the largest MLP with each activation: a model or an
# activation added to the catalog joins this list, and fails below unless book-keeping clips it.
EVERY_CATALOG_ARCHITECTURE = [
    *(ModelSpec(name=name) for name in CATALOG),
    *(
        ModelSpec(name="mlp", hyperparameters={"hidden": (1024,) * 4, "activation": activation})
        for activation in ACTIVATIONS
    ),
]


@pytest.mark.parametrize("batch_size", [8, 64, 4096])
@pytest.mark.parametrize("spec", EVERY_CATALOG_ARCHITECTURE, ids=repr)
def test_book_keeping_clips_every_catalog_model_at_any_size(spec, batch_size):
    model = build_model(spec, n_features=N_FEATURES, seed=0)
    assert grad_sample_mode_for(model, batch_size=batch_size) is GradSampleMode.BOOK_KEEPING


def test_without_a_mode_train_dp_picks_one(monkeypatch):
    used: list[GradSampleMode] = []
    make_private = dp_module._make_private

    def recording(*args: Any, **kwargs: Any) -> Any:
        used.append(kwargs["mode"])
        return make_private(*args, **kwargs)

    monkeypatch.setattr(dp_module, "_make_private", recording)
    features, labels = separable_data(60)
    train_dp(
        logistic_model(),
        features=features,
        labels=labels,
        training=TrainingSettings(local_epochs=1, batch_size=30, learning_rate=0.5),
        noise_multiplier=0.8,
        max_grad_norm=1.0,
        delta=DELTA,
        seed=7,
        accountant=Accountant.RDP,
    )
    assert used == [GradSampleMode.BOOK_KEEPING]


requires_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA: torch.cuda.is_available() is false here"
)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("mode", list(GradSampleMode))
def test_train_dp_on_cuda_matches_the_cpu_and_returns_cpu_weights(mode: GradSampleMode) -> None:
    # Poisson sampling is seeded on the CPU either way; the noise generator lives on the device
    # and draws other numbers there, so the noise is made negligible to compare weights.
    on_cpu, on_cuda = mlp_model(), mlp_model()
    parameters_before = list(on_cuda.parameters())

    cpu_spent = private_training(on_cpu, noise_multiplier=1e-9, grad_sample_mode=mode)
    cuda_spent = private_training(
        on_cuda, noise_multiplier=1e-9, grad_sample_mode=mode, device="cuda"
    )

    assert cuda_spent == cpu_spent
    assert all(a is b for a, b in zip(on_cuda.parameters(), parameters_before, strict=True))
    for parameter in on_cuda.parameters():
        assert parameter.device.type == "cpu"
        assert vars(parameter) == {}
    for left, right in zip(weights_of(on_cuda), weights_of(on_cpu), strict=True):
        torch.testing.assert_close(left, right, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@requires_cuda
def test_train_plain_on_cuda_matches_the_cpu() -> None:
    features, labels = separable_data(300)
    training = TrainingSettings(local_epochs=2, batch_size=30, learning_rate=0.5)
    on_cpu, on_cuda = mlp_model(), mlp_model()

    train_plain(on_cpu, features=features, labels=labels, training=training, seed=1)
    train_plain(on_cuda, features=features, labels=labels, training=training, seed=1, device="cuda")

    for left, right in zip(weights_of(on_cuda), weights_of(on_cpu), strict=True):
        assert left.device.type == "cpu"
        torch.testing.assert_close(left, right, rtol=1e-4, atol=1e-5)


def test_train_dp_with_the_prv_accountant_reports_prv() -> None:
    spent = private_training(logistic_model(), accountant=Accountant.PRV)
    assert spent.accountant is Accountant.PRV
    assert spent.steps == 20


def test_train_plain_learns_and_is_deterministic() -> None:
    features, labels = separable_data(300)
    training = TrainingSettings(local_epochs=3, batch_size=30, learning_rate=0.5)
    first, second = logistic_model(), logistic_model()
    before = evaluate(first, features=features, labels=labels)

    train_plain(first, features=features, labels=labels, training=training, seed=1)
    train_plain(second, features=features, labels=labels, training=training, seed=1)

    assert same_weights(first, second)
    assert evaluate(first, features=features, labels=labels).loss < 0.5 * before.loss


def test_batches_hold_the_rows_a_row_at_a_time_loader_would() -> None:
    # train_dp and train_plain gather each batch in one indexing; the rows, their order and the
    # sampling stream must stay those of torch's default loader, or seeded rounds would change.
    inputs, targets = torch.randn(50, 3), torch.randint(0, 2, (50,)).float()
    gathered = dp_module._batches(
        inputs, targets, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(4)
    )
    row_by_row = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(inputs, targets),
        batch_size=8,
        shuffle=True,
        generator=torch.Generator().manual_seed(4),
    )

    batches = list(gathered)
    assert len(batches) == len(row_by_row) == 7
    for (x, y), (expected_x, expected_y) in zip(batches, row_by_row, strict=True):
        assert torch.equal(x, expected_x) and torch.equal(y, expected_y)


def test_an_empty_batch_keeps_the_shapes_and_types_of_the_rows() -> None:
    inputs, targets = torch.randn(5, 3), torch.ones(5)
    x, y = dp_module._Rows(inputs, targets).__getitems__([])
    assert (x.shape, x.dtype, y.shape, y.dtype) == ((0, 3), inputs.dtype, (0,), targets.dtype)
