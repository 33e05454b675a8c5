"""The accountants against published values, and the classic RDP bound against an independent
implementation of the sampled Gaussian mechanism's RDP.

Published tables (TF-Privacy's MNIST tutorial) use the classic RDP → (ε, δ) conversion
ε = min_α RDP(α) + log(1/δ)/(α − 1) (Mironov 2017); `classic_rdp_epsilon` reproduces them. The
platform reports Opacus 1.6's tighter conversion (`epsilon_of`, EPSILON_CONVERSIONS), which gives
less ε for the same mechanism, and PRV less still.
"""

import pytest

from bench.accounting import (
    DELTA,
    classic_epsilon_at_integer_orders,
    independent_rdp,
    mnist_dpsgd,
    opacus_rdp,
    sampled_gaussian_rdp,
)
from hospitals.dp import (
    EPSILON_CONVERSIONS,
    Accountant,
    PrivacyStep,
    classic_rdp_epsilon,
    epsilon_of,
)


def test_the_published_default_setting():
    # TF-Privacy tutorials/README.md: σ = 1.12, 60 epochs, δ = 1e-5 → ε = 2.92 (its default).
    step = mnist_dpsgd(1.12, 60)
    assert step.steps == 14_063

    assert classic_rdp_epsilon([step], delta=DELTA) == pytest.approx(2.92, abs=0.005)
    # Opacus's conversion (Balle et al. 2020), which the platform reports: 10–20% less.
    rdp = epsilon_of([step], delta=DELTA, accountant=Accountant.RDP)
    assert rdp == pytest.approx(2.52, abs=0.005)
    assert EPSILON_CONVERSIONS[Accountant.RDP] == "rdp-balle2020"
    assert epsilon_of([step], delta=DELTA, accountant=Accountant.PRV) < rdp


@pytest.mark.parametrize(
    ("noise_multiplier", "epochs", "published"),
    [
        # TF-Privacy tutorials/README.md, "Select Parameters" (current table).
        (1.2, 10, 1.20),
        # The same table in earlier releases of TF-Privacy.
        (1.1, 60, 3.01),
        (0.7, 45, 7.10),
    ],
)
def test_published_rows_with_the_classic_conversion(noise_multiplier, epochs, published):
    step = mnist_dpsgd(noise_multiplier, epochs)
    classic = classic_rdp_epsilon([step], delta=DELTA)
    assert classic == pytest.approx(published, abs=0.005)
    assert epsilon_of([step], delta=DELTA, accountant=Accountant.RDP) < 0.92 * classic


def test_the_closed_form_matches_a_known_limit():
    # q = 1 is the plain Gaussian mechanism: RDP(α) = α / (2σ²) (Mironov 2017, Prop. 7).
    for order in (2, 5, 17):
        assert sampled_gaussian_rdp(q=1.0 - 1e-15, sigma=1.5, order=order) == pytest.approx(
            order / (2 * 1.5**2), rel=1e-6
        )


LEDGERS = [
    [mnist_dpsgd(1.12, 60)],
    [mnist_dpsgd(0.7, 45)],
    # A node's ledger: rounds of different runs, composed.
    [
        PrivacyStep(
            sample_rate=1 / 13,
            noise_multiplier=1.108,
            steps=13,
            delta=DELTA,
            accountant=Accountant.RDP,
        ),
        PrivacyStep(
            sample_rate=0.05, noise_multiplier=0.9, steps=40, delta=1e-6, accountant=Accountant.PRV
        ),
        PrivacyStep(
            sample_rate=0.2, noise_multiplier=2.5, steps=5, delta=DELTA, accountant=Accountant.RDP
        ),
    ],
]


@pytest.mark.parametrize("steps", LEDGERS)
def test_opacus_rdp_at_integer_orders_is_the_closed_form(steps):
    # What classic_rdp_epsilon sums, order by order (compute_rdp is Opacus's; the closed form is
    # bench.accounting's own).
    assert opacus_rdp(steps) == pytest.approx(independent_rdp(steps), rel=1e-9)


@pytest.mark.parametrize(
    ("steps", "tolerance"), list(zip(LEDGERS, [0.002, 0.005, 0.03], strict=True))
)
def test_classic_rdp_agrees_with_the_independent_bound(steps, tolerance):
    independent = classic_epsilon_at_integer_orders(steps, delta=DELTA)
    classic = classic_rdp_epsilon(steps, delta=DELTA)
    # classic_rdp_epsilon also minimises over fractional orders (1.1 … 10.9), so it can only be
    # lower: a little when the best order is large (MNIST), more when it is small (a short ledger).
    assert classic <= independent * (1 + 1e-9)
    assert classic == pytest.approx(independent, rel=tolerance)
