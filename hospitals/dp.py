"""DP-SGD for one hospital's local training, and the privacy arithmetic behind it (Opacus 1.6).

A round of local training is one application of the Poisson-subsampled Gaussian mechanism `steps`
times with sample rate q and noise multiplier σ. `PrivacyStep` records exactly that triple, plus the
δ and accountant it was planned with, so anyone holding the ledger can recompute ε.

Opacus samples at q = 1 / len(DataLoader(batch_size=B)) = 1 / ceil(n / B), not B / n, and runs
int(1 / q) Poisson batches per epoch; `sample_rate_for` and `steps_per_round` reproduce that
arithmetic so that what the node plans and checks against its budget is what it then spends.
"""

from __future__ import annotations

import functools
import math
import struct
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant, create_accountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from opacus.accountants.utils import MAX_SIGMA
from opacus.data_loader import DPDataLoader
from opacus.optimizers import DPOptimizer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hospitals.book_keeping import BookKeepingClipper, ClippedSumOptimizer, book_keeping_layers
from hospitals.evaluation import FeatureArray, LabelArray, binary_logits, tensors_from_arrays

_CPU = torch.device("cpu")

# Planning stops once ε is within this much below the target (relative), so the planned σ spends
# between 99.5% and 100% of the budget whatever the target's magnitude.
PLANNING_RELATIVE_TOLERANCE = 0.005
# Evaluations of ε each pass of a plan's search may take before it gives up: over 100 random
# studies (ε from 0.5 to 30, q from 0.001 to 1, 1 to 5000 steps) the passes took at most 17.
_PLANNING_MAX_EVALUATIONS = 60
# Names the search below; a node's remembered plans (hospitals/plans.py) are keyed by it, so a
# change of search never answers with a σ another search found.
NOISE_SEARCH = "whole-order-guided-log-secant"
# Where the search starts: above the σ of most studies, where every accountant is quick.
_FIRST_SIGMA = 4.0
# log(ε / target) beyond which an overspend only weighs as much (ε is infinite as σ nears 0).
_MAX_LOG_EXCESS = 50.0

# Attributes Opacus leaves behind on parameters and modules even after GradSampleModule.cleanup():
# the optimizer's `summed_grad`, and the per-module activation stash of the hooks.
_OPACUS_PARAMETER_ATTRIBUTES = (
    "grad_sample",
    "summed_grad",
    "_forward_counter",
    "_current_grad_sample",
    "_norm_sample",
)
_OPACUS_MODULE_ATTRIBUTES = (
    "activations",
    "max_batch_len",
    "autograd_grad_sample_hooks",
    "ft_compute_sample_grad",
)


class Accountant(StrEnum):
    RDP = "rdp"
    PRV = "prv"


class GradSampleMode(StrEnum):
    """How each row's gradient is bounded. Every mode clips each row's gradient to
    max_grad_norm before Opacus noises the sum, so the mechanism and its accounting are the same;
    they differ in time and memory only (`make bench`, suite dp)."""

    HOOKS = "hooks"  # per-sample gradients from module hooks, one tensor per row and parameter
    FUNCTORCH = "functorch"  # the same tensors from torch.func.vmap
    # The same tensors from torch's ExpandedWeights: each layer's own autograd function computes
    # them during the backward pass, with no module hook in between.
    EXPANDED_WEIGHTS = "ew"
    # Per-sample gradient norms only (Li et al. 2022, "ghost clipping"), then a second backward
    # of the clip-weighted loss: no per-sample gradient is ever materialised.
    GHOST = "ghost"
    # Per-sample gradient norms as ghost clipping computes them, and the clipped sum as one
    # matrix product per layer (hospitals.book_keeping): one backward, for models of linear
    # layers only, which every catalog model is. Opacus samples, noises and accounts.
    BOOK_KEEPING = "bk"


# ExpandedWeights holds batch × parameters per-sample gradient values a step; up to this many it
# is the fastest mode. Measured on CPU (bench suite dp, batch 64, one thread), DP epoch / non-DP
# epoch, ExpandedWeights vs hooks vs ghost clipping: logistic regression (11 parameters) 2.7× vs
# 2.9× vs 4.0×, MLP 32 (385) 2.8× vs 3.6× vs 4.7×, MLP 128 (1,537) 3.7× vs 3.9× vs 4.3×, MLP
# 64×64 (4,929: 315k values) 3.7× vs 4.5× vs 5.8×, MLP 80×80 (7,441: 476k) 4.4× vs ghost 4.6×,
# MLP 96×96 (10,465: 670k) 4.9× vs 4.6×, MLP 128×128 (18,049) 7.0× vs 4.5×, MLP 256×256 12.0× vs
# 4.3×. Ghost clipping's second backward costs a small model more than its per-sample gradients,
# and no wide model can blow up memory. A single wide layer favours ExpandedWeights a little
# further (MLP 1024, 721k values: 3.7× vs 3.9×); the bound is where two hidden layers turn.
PER_SAMPLE_MAX_VALUES = 2**19


def grad_sample_mode_for(model: nn.Module, *, batch_size: int) -> GradSampleMode:
    """Book-keeping where it can clip `model` (every catalog model). Otherwise ExpandedWeights
    while a step's per-sample gradients stay small, ghost clipping beyond."""
    if book_keeping_layers(model) is not None:
        return GradSampleMode.BOOK_KEEPING
    parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if batch_size * parameters <= PER_SAMPLE_MAX_VALUES:
        return GradSampleMode.EXPANDED_WEIGHTS
    return GradSampleMode.GHOST


# How each accountant's bound becomes (ε, δ); every ε the platform publishes names its conversion.
# RDP: Balle et al. 2020 ("Hypothesis testing interpretations and Rényi DP", Opacus 1.6's
# get_privacy_spent) is a valid and tighter bound than Mironov 2017's classic ε = RDP(α) +
# log(1/δ)/(α−1), which published tables (TF-Privacy) use; it reports 10–20% less ε for the same
# mechanism. PRV (Gopi et al. 2021) composes privacy loss distributions numerically and reports
# the upper end of its error bound.
EPSILON_CONVERSIONS: dict[Accountant, str] = {
    Accountant.RDP: "rdp-balle2020",
    Accountant.PRV: "prv-gopi2021-upper",
}


def _require_positive_finite(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def _require_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _require_delta(delta: float) -> None:
    if isinstance(delta, bool) or not isinstance(delta, int | float) or not 0 < delta < 1:
        raise ValueError(f"delta must be a number in (0, 1), got {delta!r}")


def _require_sample_rate(sample_rate: float) -> None:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | float):
        raise ValueError(f"sample_rate must be a number, got {sample_rate!r}")
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate!r}")


@dataclass(frozen=True)
class DpSettings:
    target_epsilon: float
    delta: float
    max_grad_norm: float
    accountant: Accountant = Accountant.RDP

    def __post_init__(self) -> None:
        _require_positive_finite("target_epsilon", self.target_epsilon)
        _require_delta(self.delta)
        _require_positive_finite("max_grad_norm", self.max_grad_norm)
        # Settings arrive as strings from run configs; Accountant() rejects unknown names.
        object.__setattr__(self, "accountant", Accountant(self.accountant))


@dataclass(frozen=True)
class TrainingSettings:
    local_epochs: int
    batch_size: int
    learning_rate: float

    def __post_init__(self) -> None:
        _require_positive_int("local_epochs", self.local_epochs)
        _require_positive_int("batch_size", self.batch_size)
        _require_positive_finite("learning_rate", self.learning_rate)


@dataclass(frozen=True)
class PrivacyStep:
    """What one round of DP training spent: `steps` Poisson-subsampled Gaussian steps."""

    sample_rate: float
    noise_multiplier: float
    steps: int
    delta: float
    accountant: Accountant

    def __post_init__(self) -> None:
        _require_sample_rate(self.sample_rate)
        _require_positive_finite("noise_multiplier", self.noise_multiplier)
        _require_positive_int("steps", self.steps)
        _require_delta(self.delta)
        object.__setattr__(self, "accountant", Accountant(self.accountant))


def sample_rate_for(*, n_rows: int, batch_size: int) -> float:
    """The Poisson sample rate Opacus uses for `n_rows` rows and a nominal `batch_size`.

    Opacus derives q from the length of the plain loader, 1 / ceil(n_rows / batch_size): equal to
    min(1, batch_size / n_rows) when batch_size divides n_rows or exceeds it, slightly lower
    otherwise.

    >>> sample_rate_for(n_rows=1000, batch_size=100)
    0.1
    >>> sample_rate_for(n_rows=1000, batch_size=64)  # 16 batches, not 1000/64 = 15.6
    0.0625
    """
    _require_positive_int("n_rows", n_rows)
    _require_positive_int("batch_size", batch_size)
    plain_batches = -(-n_rows // batch_size)
    return 1.0 / plain_batches


def _poisson_batches_per_epoch(sample_rate: float) -> int:
    # Mirrors opacus.utils.uniform_sampler.UniformWithReplacementSampler: int(1 / q) batches per
    # epoch. In floating point 1 / (1 / k) falls just below k for some k (93, 99, 105, ...), so
    # Opacus then takes k - 1 steps per epoch; counting the same way keeps plan and spend equal.
    return int(1 / sample_rate)


def steps_per_round(*, n_rows: int, training: TrainingSettings) -> int:
    """Optimizer steps `train_dp` takes in one round: local epochs × Poisson batches per epoch.

    >>> steps_per_round(n_rows=1000, training=TrainingSettings(local_epochs=2, batch_size=100,
    ...                                                        learning_rate=0.1))
    20
    """
    sample_rate = sample_rate_for(n_rows=n_rows, batch_size=training.batch_size)
    return training.local_epochs * _poisson_batches_per_epoch(sample_rate)


def plan_round(
    *, privacy: DpSettings, training: TrainingSettings, rounds: int, n_rows: int
) -> PrivacyStep:
    """One round's DP parameters for `n_rows` training rows: σ is set so that `rounds` such rounds
    land on the study's target ε. Nodes charge exactly this; the portal's preflight projects it."""
    _require_positive_int("rounds", rounds)
    sample_rate = sample_rate_for(n_rows=n_rows, batch_size=training.batch_size)
    steps = steps_per_round(n_rows=n_rows, training=training)
    noise = plan_noise_multiplier(dp=privacy, sample_rate=sample_rate, total_steps=steps * rounds)
    return PrivacyStep(
        sample_rate=sample_rate,
        noise_multiplier=noise,
        steps=steps,
        delta=privacy.delta,
        accountant=privacy.accountant,
    )


def plan_noise_multiplier(*, dp: DpSettings, sample_rate: float, total_steps: int) -> float:
    """σ for which `total_steps` steps at `sample_rate` spend just under (target ε, δ).

    Plan for the whole run (every round), not per round: composing per-round budgets overspends.
    """
    _require_sample_rate(sample_rate)
    _require_positive_int("total_steps", total_steps)
    return _planned_noise_multiplier(dp, sample_rate, total_steps)


# A plan asks the accountant for ε at several σ: ~30 ms each with RDP, ~0.2 s with PRV. A node
# plans every training message with the same inputs; σ depends on nothing else, so equal inputs
# are answered from memory.
@functools.lru_cache(maxsize=256)
def _planned_noise_multiplier(dp: DpSettings, sample_rate: float, total_steps: int) -> float:
    try:
        return search_noise_multiplier(dp=dp, sample_rate=sample_rate, total_steps=total_steps)
    except ValueError as error:
        raise ValueError(
            f"no noise multiplier reaches ε={dp.target_epsilon} at δ={dp.delta:g} "
            f"({dp.accountant.value}) for {total_steps} steps at sample rate {sample_rate:.4g}: "
            f"raise the budget or train fewer steps ({error})"
        ) from error


def search_noise_multiplier(*, dp: DpSettings, sample_rate: float, total_steps: int) -> float:
    """The σ whose ε, by `epsilon_of`, lies within `PLANNING_RELATIVE_TOLERANCE` below target.

    Opacus's `get_noise_multiplier` answers the same question by doubling σ from 20, then
    bisecting: 12 to 14 evaluations of ε for typical studies. This runs `_log_secant_search`
    twice. First on RDP at the whole orders only (`_whole_order_epsilon`, ~5 ms an evaluation,
    where the fractional orders' series cost up to 0.15 s), from σ = `_FIRST_SIGMA`. Then on the
    study's accountant, from the σ found and with the slope of log ε the first pass met last.
    Over 100 random studies the second pass evaluated RDP's ε 2.2 times on average (at most 5)
    and PRV's 3.1 (40 studies), where one pass from `_FIRST_SIGMA` took 5.8 of either: planning
    took 1.3 times less time with RDP (1.5 to 2.6 times on `make bench`'s studies), 1.25 with
    PRV. It returns only a σ whose ε by the accountant it evaluated within the band. ValueError
    if σ = `MAX_SIGMA` (Opacus's bound) still overspends.
    """

    def whole_order_epsilon(sigma: float) -> float:
        return _whole_order_epsilon(
            noise_multiplier=sigma, sample_rate=sample_rate, steps=total_steps, delta=dp.delta
        )

    def accountant_epsilon(sigma: float) -> float:
        return spent_by(dp, noise_multiplier=sigma, sample_rate=sample_rate, steps=total_steps)

    start, slope = math.log(_FIRST_SIGMA), -1.0
    try:
        start, slope = _log_secant_search(
            _excess(whole_order_epsilon, target=dp.target_epsilon), start=start, slope=slope
        )
    except ValueError:  # only a guess: the accountant's own search then starts afresh
        pass
    log_sigma, _ = _log_secant_search(
        _excess(accountant_epsilon, target=dp.target_epsilon), start=start, slope=slope
    )
    return math.exp(log_sigma)


# Orders of `RDPAccountant.DEFAULT_ALPHAS` that are whole numbers: RDP has a closed form there,
# where each fractional order sums a series.
_WHOLE_ORDERS = tuple(order for order in RDPAccountant.DEFAULT_ALPHAS if float(order).is_integer())


def _whole_order_epsilon(
    *, noise_multiplier: float, sample_rate: float, steps: int, delta: float
) -> float:
    """ε by RDP over `_WHOLE_ORDERS`: never below RDP's over all the default orders (a minimum
    over fewer of them), and above PRV's, a tighter accounting, in every study measured. The
    search takes it as a guess only."""
    rdp = compute_rdp(
        q=sample_rate, noise_multiplier=noise_multiplier, steps=steps, orders=_WHOLE_ORDERS
    )
    epsilon, _ = get_privacy_spent(orders=_WHOLE_ORDERS, rdp=rdp, delta=delta)
    return float(epsilon)


def _excess(epsilon_at: Callable[[float], float], *, target: float) -> Callable[[float], float]:
    """log(ε / `target`) at log σ, by `epsilon_at`; ValueError past `_PLANNING_MAX_EVALUATIONS`
    evaluations or on a NaN ε."""
    evaluations = 0

    def excess(log_sigma: float) -> float:
        nonlocal evaluations
        evaluations += 1
        if evaluations > _PLANNING_MAX_EVALUATIONS:
            raise ValueError(f"no σ found in {_PLANNING_MAX_EVALUATIONS} evaluations of ε")
        sigma = math.exp(log_sigma)
        epsilon = epsilon_at(sigma)
        if math.isnan(epsilon):
            raise ValueError(f"the accountant's ε is NaN at σ = {sigma:g}")
        # Capped, so that an infinite ε (σ near 0) still weighs as a finite overspend.
        return min(math.log(epsilon / target), _MAX_LOG_EXCESS)

    return excess


def _log_secant_search(
    excess: Callable[[float], float], *, start: float, slope: float
) -> tuple[float, float]:
    """A log σ where `excess` lies in [log(1 − `PLANNING_RELATIVE_TOLERANCE`), 0], searched from
    log σ = `start`; and the slope of `excess` per unit of log σ between the last two log σ it
    evaluated (`slope` after one).

    ε falls with σ about as σ^slope: from `start` it steps by the excess over the slope, `slope`
    (< 0) until two evaluations measure one, until an overspending and an underspending σ bracket
    the answer, then takes secant steps, each kept inside the bracket. ValueError if
    σ = `MAX_SIGMA` still overspends.
    """
    close_enough = math.log1p(-PLANNING_RELATIVE_TOLERANCE)
    # Aim at the middle of the accepted band [close_enough, 0], not its edge at 0: near the
    # answer an interpolation then lands inside the band, not just past it.
    aim = close_enough / 2
    evaluated: list[tuple[float, float]] = []  # (log σ, excess - aim), latest last

    def probe(point: float) -> float:
        value = excess(point)
        evaluated.append((point, value - aim))
        return value

    def met_slope() -> float:
        if len(evaluated) < 2:
            return slope
        (a, a_value), (b, b_value) = evaluated[-2:]
        met = (b_value - a_value) / (b - a)
        return met if math.isfinite(met) and met < 0 else slope

    # Bracket the answer. On the assumed slope a step of the excess lands on it; upward, a curve
    # that falls slower gets twice the stretch each time. Downward, a step at most halves σ: PRV's
    # ε costs more the smaller σ is (here 0.1 s at σ = 2, 2 s at σ = 0.3 and memory without bound
    # near 0.05, for q = 0.1 and 300 steps), so no probe lands far below the answer.
    over: tuple[float, float] | None = None  # (log σ, excess - aim) where ε overspends
    under: tuple[float, float] | None = None  # and where it spends too little
    point, stretch = start, 1.0
    while over is None or under is None:
        value = probe(point)
        reach = -1.0 / met_slope()
        if value > 0:
            if point > math.log(MAX_SIGMA):
                raise ValueError(f"even σ = {MAX_SIGMA:g} overspends")
            over = (point, value - aim)
            # Past MAX_SIGMA only to check it: an overspend there ends the search.
            point = min(point + stretch * reach * (value - aim), math.log(2 * MAX_SIGMA))
            stretch *= 2
        elif value >= close_enough:
            return point, met_slope()
        else:
            under = (point, value - aim)
            point += max(reach * (value - aim), -math.log(2))
    # Then secant steps through the last two points, kept inside the bracket: where one would
    # leave it, false position between the bracket's ends instead.
    (low, low_value), (high, high_value) = over, under
    while True:
        point = _secant_root(*evaluated[-2:])
        if not low < point < high:
            point = _secant_root((low, low_value), (high, high_value))
        value = probe(point)
        if value > 0:
            low, low_value = point, value - aim
        elif value >= close_enough:
            return point, met_slope()
        else:
            high, high_value = point, value - aim


def spent_by(dp: DpSettings, *, noise_multiplier: float, sample_rate: float, steps: int) -> float:
    """ε of `steps` steps at (σ, q), at `dp`'s δ and by its accountant: what a plan spends."""
    step = PrivacyStep(
        sample_rate=sample_rate,
        noise_multiplier=noise_multiplier,
        steps=steps,
        delta=dp.delta,
        accountant=dp.accountant,
    )
    return epsilon_of([step], delta=dp.delta, accountant=dp.accountant)


def _secant_root(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Where the line through points (x, y) `a` and `b` crosses y = 0 (NaN if it is flat)."""
    (xa, ya), (xb, yb) = a, b
    return (xa * yb - xb * ya) / (yb - ya) if yb != ya else math.nan


def epsilon_of(steps: Sequence[PrivacyStep], *, delta: float, accountant: Accountant) -> float:
    """ε at `delta` of the composition of every step in `steps`, by `accountant`.

    Each entry's own δ and accountant say how it was planned; the (σ, q, steps) triples are what
    composes, so the whole history is re-accounted here with one accountant at one δ.
    """
    _require_delta(delta)
    if not steps:
        return 0.0
    # Composition is commutative: merging entries with equal (σ, q) is exact and keeps PRV's
    # discretisation (one PRV per distinct mechanism) and RDP's per-entry sums cheap.
    merged: Counter[tuple[float, float]] = Counter()
    for step in steps:
        merged[(step.noise_multiplier, step.sample_rate)] += step.steps
    history = [
        (noise_multiplier, sample_rate, count)
        for (noise_multiplier, sample_rate), count in sorted(merged.items())
    ]
    if Accountant(accountant) is Accountant.RDP:
        return _rdp_epsilon(history, delta=delta)
    mechanism = create_accountant(mechanism=Accountant.PRV.value)
    mechanism.history = history
    with _unsubsampled_prv_quiet():
        return float(mechanism.get_epsilon(delta=delta))


def _rdp_epsilon(history: Sequence[tuple[float, float, int]], *, delta: float) -> float:
    """Opacus's `RDPAccountant.get_privacy_spent`, step for step, with each mechanism's per-step
    RDP taken from `RDP_CURVES`: a round asks for ε three times (run target, lifetime cap,
    reported ε) and each curve costs ~0.1 s."""
    rdp = sum(
        [
            RDP_CURVES.per_step(noise_multiplier=noise_multiplier, sample_rate=sample_rate) * count
            for noise_multiplier, sample_rate, count in history
        ]
    )
    epsilon, _ = get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
    return float(epsilon)


class RdpCurves:
    """Opacus's one-step RDP curve (at `RDPAccountant.DEFAULT_ALPHAS`) of each (σ, q) met.

    compute_rdp(steps=n) is the one-step curve times n, so a known curve times n is the same float
    array Opacus would compute. A curve costs ~0.1 s of CPU and every round of a study needs the
    same one. ClientApp tasks run one after another in a node's task worker, where the curves
    simply stay; a task forked from `cohort-launcher` while the worker is busy hands the curves it
    computed to the launcher (`computed_records`, `remember`), whose later forks inherit them.
    Curves travel only between a node's own processes, never through a file, and only as Opacus
    computed them: `remember` refuses a record that is not one.
    """

    RECORD = struct.Struct(f"<dd{len(RDPAccountant.DEFAULT_ALPHAS)}d")

    def __init__(self) -> None:
        self._curves: dict[tuple[float, float], np.ndarray] = {}
        self._computed: list[tuple[float, float]] = []  # here, not remembered from elsewhere

    def __len__(self) -> int:
        return len(self._curves)

    def per_step(self, *, noise_multiplier: float, sample_rate: float) -> np.ndarray:
        key = (noise_multiplier, sample_rate)
        if (known := self._curves.get(key)) is not None:
            return known
        curve = np.asarray(
            compute_rdp(
                q=sample_rate,
                noise_multiplier=noise_multiplier,
                steps=1,
                orders=RDPAccountant.DEFAULT_ALPHAS,
            ),
            dtype=np.float64,
        )
        self._keep(key, curve)
        self._computed.append(key)
        return curve

    def computed_records(self) -> list[bytes]:
        """Each curve this process computed itself, as one `RECORD` (atomic in one pipe write)."""
        return [self.RECORD.pack(*key, *self._curves[key]) for key in self._computed]

    def remember(self, record: bytes) -> None:
        """Keep a curve another process of this node computed; ValueError if `record` is not one
        that `computed_records` writes."""
        if len(record) != self.RECORD.size:
            raise ValueError(f"an RDP curve record has {self.RECORD.size} bytes, not {len(record)}")
        noise_multiplier, sample_rate, *values = self.RECORD.unpack(record)
        _require_positive_finite("noise_multiplier", noise_multiplier)
        _require_sample_rate(sample_rate)
        curve = np.array(values, dtype=np.float64)
        # +inf is a valid order's bound (no guarantee at that α); NaN and negatives are not.
        if np.any(np.isnan(curve) | (curve < 0)):
            raise ValueError("an RDP curve holds no NaN and no negative value")
        self._keep((noise_multiplier, sample_rate), curve)

    def _keep(self, key: tuple[float, float], curve: np.ndarray) -> None:
        curve.flags.writeable = False
        self._curves[key] = curve


#: This process's curves; `cohort-launcher` passes them on from task to task.
RDP_CURVES = RdpCurves()


def classic_rdp_epsilon(steps: Sequence[PrivacyStep], *, delta: float) -> float:
    """ε by RDP with the classic conversion (Mironov 2017, Prop. 3), as in published tables.

    For comparison only: `epsilon_of` with RDP uses Opacus's tighter conversion, and that is what
    the ledger enforces and the platform reports.
    """
    _require_delta(delta)
    if not steps:
        return 0.0
    orders = np.array(RDPAccountant.DEFAULT_ALPHAS, dtype=float)
    rdp = sum(
        (
            np.asarray(
                compute_rdp(
                    q=step.sample_rate,
                    noise_multiplier=step.noise_multiplier,
                    steps=step.steps,
                    orders=orders,
                )
            )
            for step in steps
        ),
        start=np.zeros_like(orders),
    )
    return float(np.min(rdp + math.log(1 / delta) / (orders - 1)))


@contextmanager
def _unsubsampled_prv_quiet() -> Iterator[None]:
    # Opacus' PRV takes log(1 - q), which is -inf at q = 1 (a dataset smaller than one batch).
    # -inf is the right limit there and the resulting ε is correct, but numpy warns on it.
    with np.errstate(divide="ignore"):
        yield


class _Rows(TensorDataset):
    """A TensorDataset that hands a DataLoader a whole batch at once.

    Torch's DataLoader fetches a batch with `__getitems__` where a dataset has one, and otherwise
    a row at a time, stacking the rows in `collate_fn`: for these small models that was over a
    quarter of a DP epoch. The batch is the same tensors, gathered by one index per tensor.
    """

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return tuple(tensor[index] for tensor in self.tensors)


def _gathered(batch: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
    """`collate_fn` for `_Rows`: its batches are already tensors. Opacus's wrapper around it
    still makes an empty Poisson batch's tensors from the first batch's shapes."""
    return batch


def _batches(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    batch_size: int,
    generator: torch.Generator,
    shuffle: bool = False,
) -> DataLoader[tuple[torch.Tensor, ...]]:
    return DataLoader(
        _Rows(inputs, targets),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        collate_fn=_gathered,
    )


def _seeded_generator(
    seed_sequence: np.random.SeedSequence, device: torch.device = _CPU
) -> torch.Generator:
    seed = int(seed_sequence.generate_state(1, dtype=np.uint64)[0])
    return torch.Generator(device=device).manual_seed(seed)


def _require_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


@contextmanager
def _restoring_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.train()
    try:
        yield
    finally:
        model.train(was_training)


@contextmanager
def _on_device(model: nn.Module, device: torch.device) -> Iterator[None]:
    # Module.to() swaps each parameter's data in place: the caller's parameters stay the same
    # objects, and come back on the CPU, where the node reads and encrypts them.
    model.to(device)
    try:
        yield
    finally:
        model.to(_CPU)


@contextmanager
def _without_first_layer_hook_warning() -> Iterator[None]:
    # Opacus computes per-sample gradients with full backward hooks; torch warns on every backward
    # that the first layer's input does not require grad. Opacus only reads grad_output there,
    # which torch still passes, so the warning is harmless for per-sample gradients.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message="Full backward hook is firing when gradients are computed with respect to "
            "module outputs since no inputs require gradients",
            category=UserWarning,
        )
        yield


def _remove_opacus_residue(model: nn.Module) -> None:
    for parameter in model.parameters():
        for attribute in _OPACUS_PARAMETER_ATTRIBUTES:
            if hasattr(parameter, attribute):
                delattr(parameter, attribute)
        parameter.grad = None
    for module in model.modules():
        for attribute in _OPACUS_MODULE_ATTRIBUTES:
            if attribute in module.__dict__:
                delattr(module, attribute)
        # torch keeps marking a module as "uses full backward hooks" after they are removed, and
        # would then refuse a later register_backward_hook on it; reset the mark once none remain.
        if not module._backward_hooks:
            module._is_full_backward_hook = None


@dataclass(frozen=True)
class _PrivateTraining:
    """The model, optimizer and Poisson loader of one DP training, whatever the mode, with the
    mode's backward pass: it leaves what the optimizer clips (hooks, functorch, ew: per-sample
    gradients) or the clipped sum itself (ghost, bk)."""

    module: nn.Module
    optimizer: DPOptimizer
    loader: DPDataLoader
    backward: Callable[[torch.Tensor, torch.Tensor], None]  # (logits, targets)
    cleanup: Callable[[], None]  # takes the mode's hooks and attributes off the model
    mode: GradSampleMode

    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        # On an empty batch every per-sample gradient (or norm) is empty, so the step adds noise
        # only; it must run, as q assumes.
        if len(targets) == 0 and self.mode is GradSampleMode.EXPANDED_WEIGHTS:
            # torch's ExpandedWeights refuses a batch of no rows, so its empty per-sample
            # gradients are set here, as the other modes' backward leaves them.
            for parameter in self.optimizer.params:
                if parameter.requires_grad:
                    parameter.grad_sample = parameter.new_zeros((0, *parameter.shape))
        else:
            self.backward(binary_logits(self.module, inputs), targets)
        self.optimizer.step()


def _make_private(
    engine: PrivacyEngine,
    model: nn.Module,
    loader: DataLoader[tuple[torch.Tensor, ...]],
    *,
    learning_rate: float,
    noise_multiplier: float,
    max_grad_norm: float,
    noise_generator: torch.Generator,
    mode: GradSampleMode,
) -> _PrivateTraining:
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate)
    if mode is GradSampleMode.BOOK_KEEPING:
        return _book_keeping(
            engine,
            model,
            optimizer,
            loader,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            noise_generator=noise_generator,
        )
    criterion = nn.BCEWithLogitsLoss()
    made = engine.make_private(
        module=model,
        optimizer=optimizer,
        criterion=criterion,
        data_loader=loader,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        poisson_sampling=True,
        noise_generator=noise_generator,
        grad_sample_mode=mode.value,
    )
    if mode is GradSampleMode.GHOST:
        module, private_optimizer, loss, private_loader = made
    else:
        module, private_optimizer, private_loader = made
        loss = criterion

    def backward(logits: torch.Tensor, targets: torch.Tensor) -> None:
        loss(logits, targets).backward()

    return _PrivateTraining(
        module, private_optimizer, private_loader, backward, cleanup=module.cleanup, mode=mode
    )


def _book_keeping(
    engine: PrivacyEngine,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader[tuple[torch.Tensor, ...]],
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    noise_generator: torch.Generator,
) -> _PrivateTraining:
    """What `PrivacyEngine.make_private` assembles for ghost clipping (Opacus's Poisson loader,
    an optimizer that noises clipped sums, the accountant's step hook), with the model left
    as it is: `BookKeepingClipper` clips."""
    layers = book_keeping_layers(model)
    if layers is None:
        raise ValueError("book-keeping clips models of linear layers and row-wise modules only")
    private_loader = DPDataLoader.from_data_loader(loader)
    sample_rate = 1 / len(private_loader)
    private_optimizer = ClippedSumOptimizer(
        optimizer,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=int(len(private_loader.dataset) * sample_rate),
        generator=noise_generator,
    )
    private_optimizer.attach_step_hook(
        engine.accountant.get_optimizer_hook_fn(sample_rate=sample_rate)
    )
    clipper = BookKeepingClipper(layers, max_grad_norm=max_grad_norm)

    def backward(logits: torch.Tensor, targets: torch.Tensor) -> None:
        clipper.backward(
            nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="sum")
        )

    return _PrivateTraining(
        model,
        private_optimizer,
        private_loader,
        backward,
        cleanup=clipper.remove,
        mode=GradSampleMode.BOOK_KEEPING,
    )


def train_dp(
    model: nn.Module,
    *,
    features: FeatureArray,
    labels: LabelArray,
    training: TrainingSettings,
    noise_multiplier: float,
    max_grad_norm: float,
    delta: float,
    seed: int,
    accountant: Accountant,
    grad_sample_mode: GradSampleMode | None = None,
    device: torch.device | str = _CPU,
) -> PrivacyStep:
    """Trains `model` in place with DP-SGD and returns the privacy it spent.

    Poisson sampling, per-sample clipping to `max_grad_norm`, Gaussian noise σ·`max_grad_norm`,
    BCE-with-logits loss. Batches left empty by Poisson sampling still take a (noise-only) step,
    as the accounting assumes. Sampling and noise come from generators seeded by `seed`, so the
    same model, data, seed and device give the same weights, in every `grad_sample_mode` up to
    rounding; without a mode, `grad_sample_mode_for` picks one. Training runs on `device`;
    afterwards `model` holds the trained weights on the CPU and carries no Opacus hooks or
    attributes, so it can be trained again next round.
    `delta` is recorded in the returned step as the δ the round was planned at.
    """
    _require_positive_finite("noise_multiplier", noise_multiplier)
    _require_positive_finite("max_grad_norm", max_grad_norm)
    _require_delta(delta)
    _require_seed(seed)
    on = torch.device(device)
    mode = (
        grad_sample_mode_for(model, batch_size=training.batch_size)
        if grad_sample_mode is None
        else GradSampleMode(grad_sample_mode)
    )
    inputs, targets = tensors_from_arrays(features=features, labels=labels)
    sampling_seed, noise_seed = np.random.SeedSequence(seed).spawn(2)
    plain_loader = _batches(
        inputs,
        targets,
        batch_size=training.batch_size,
        generator=_seeded_generator(sampling_seed),
    )
    planned_sample_rate = sample_rate_for(n_rows=len(targets), batch_size=training.batch_size)
    engine = PrivacyEngine(accountant=Accountant(accountant).value)
    # Opacus refuses modules in eval mode; the caller's mode comes back afterwards.
    with _restoring_mode(model), _on_device(model, on):
        private = _make_private(
            engine,
            model,
            plain_loader,
            learning_rate=training.learning_rate,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            noise_generator=_seeded_generator(noise_seed, on),
            mode=mode,
        )
        try:
            _check_sample_rate(private.loader, planned=planned_sample_rate)
            with _without_first_layer_hook_warning():
                for _ in range(training.local_epochs):
                    for batch_inputs, batch_targets in private.loader:
                        private.step(batch_inputs.to(on), batch_targets.to(on))
        finally:
            private.optimizer.zero_grad()
            private.cleanup()
            _remove_opacus_residue(model)
    return PrivacyStep(
        sample_rate=planned_sample_rate,
        noise_multiplier=noise_multiplier,
        steps=_noised_steps(engine),
        delta=delta,
        accountant=Accountant(accountant),
    )


def _check_sample_rate(loader: DPDataLoader, *, planned: float) -> None:
    if loader.sample_rate != planned:
        raise RuntimeError(
            f"Opacus samples at q={loader.sample_rate} but sample_rate_for planned q={planned}: "
            "the plan would not match the spend"
        )


def _noised_steps(engine: PrivacyEngine) -> int:
    # Opacus' accountant counts every optimizer step that added noise, empty batches included.
    # Its q is not used: Opacus accounts q = 1 / len(Poisson loader) = 1 / int(1 / q_sampled), which
    # exceeds the q the sampler really uses whenever int() rounds down (1 / (1 / 93) < 93, ...).
    history: list[tuple[float, float, int]] = list(engine.accountant.history)
    return sum(count for _, _, count in history)


def train_plain(
    model: nn.Module,
    *,
    features: FeatureArray,
    labels: LabelArray,
    training: TrainingSettings,
    seed: int,
    device: torch.device | str = _CPU,
) -> None:
    """Non-private baseline: same loss, optimizer and epochs, with shuffled fixed-size batches.

    Trains on `device`; the trained weights come back on the CPU, as `train_dp`'s do."""
    _require_seed(seed)
    on = torch.device(device)
    inputs, targets = tensors_from_arrays(features=features, labels=labels)
    loader = _batches(
        inputs,
        targets,
        batch_size=training.batch_size,
        shuffle=True,
        generator=_seeded_generator(np.random.SeedSequence(seed)),
    )
    with _restoring_mode(model), _on_device(model, on):
        optimizer = torch.optim.SGD(model.parameters(), lr=training.learning_rate)
        for _ in range(training.local_epochs):
            for batch_inputs, batch_targets in loader:
                optimizer.zero_grad()
                loss = nn.functional.binary_cross_entropy_with_logits(
                    binary_logits(model, batch_inputs.to(on)), batch_targets.to(on)
                )
                torch.autograd.backward(loss)
                optimizer.step()
    model.zero_grad(set_to_none=True)
