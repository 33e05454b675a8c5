"""Encrypt, sum with the keyless context, decrypt: the weighted mean survives, within 1e-6."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
import tenseal as ts
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto import (
    MAX_LENGTH,
    MAX_SUMMANDS,
    AggregatorContext,
    ContextMismatchError,
    DecryptionError,
    EncryptedUpdate,
    MalformedUpdateError,
    OversizeError,
    SecretContext,
    ValueRangeError,
    decrypt_mean,
    encrypt_update,
    max_update_nbytes,
    sum_updates,
)

SLOTS = 4096
LENGTHS = [1, 2, 3, 777, SLOTS - 1, SLOTS, SLOTS + 1, 2 * SLOTS - 1, 3 * SLOTS + 5]


@pytest.fixture(scope="module")
def secret() -> SecretContext:
    return SecretContext.generate()


@pytest.fixture(scope="module")
def aggregator(secret: SecretContext) -> AggregatorContext:
    return AggregatorContext.from_bytes(secret.aggregator_context().to_bytes())


@st.composite
def hospitals(draw: st.DrawFn) -> tuple[list[npt.NDArray[np.float64]], list[float]]:
    """2-5 hospitals' models in [-100, 100], with hypothesis-chosen extremes, and weights."""
    length = draw(st.one_of(st.sampled_from(LENGTHS), st.integers(1, 3 * SLOTS)))
    count = draw(st.integers(2, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    models = []
    for _ in range(count):
        magnitude = draw(st.sampled_from([1e-6, 1.0, 100.0]))
        model = rng.uniform(-magnitude, magnitude, length)
        extremes = st.tuples(st.integers(0, length - 1), st.floats(-100, 100))
        for index, value in draw(st.lists(extremes, max_size=4)):
            model[index] = value
        models.append(model)
    # Small totals matter most: CKKS's absolute error is divided by the total weight.
    weight = st.one_of(
        st.integers(1, 10).map(float), st.integers(1, 100_000).map(float), st.floats(1, 100_000)
    )
    return models, draw(st.lists(weight, min_size=count, max_size=count))


@settings(max_examples=25, deadline=None)
@given(case=hospitals())
def test_decrypted_mean_matches_numpy(
    secret: SecretContext,
    aggregator: AggregatorContext,
    case: tuple[list[npt.NDArray[np.float64]], list[float]],
) -> None:
    models, weights = case
    updates = [
        encrypt_update(secret, values=m, weight=w) for m, w in zip(models, weights, strict=True)
    ]

    result = decrypt_mean(secret, sum_updates(aggregator, updates))

    expected = np.average(np.stack(models), axis=0, weights=weights)
    assert result.mean.dtype == np.float64
    assert result.mean.shape == expected.shape
    assert np.max(np.abs(result.mean - expected)) <= 1e-6
    assert result.total_weight == pytest.approx(sum(weights), rel=1e-9)


def test_worst_case_precision_has_margin(
    secret: SecretContext, aggregator: AggregatorContext
) -> None:
    # Smallest total weight and largest values: CKKS's absolute error is divided by only 2.
    rng = np.random.default_rng(7)
    models = [rng.choice([-100.0, 100.0], size=2 * SLOTS) for _ in range(2)]
    updates = [encrypt_update(secret, values=m, weight=1) for m in models]

    result = decrypt_mean(secret, sum_updates(aggregator, updates))

    # Measured ~1e-11 with the default parameters; 1e-6 is the requirement.
    assert np.max(np.abs(result.mean - (models[0] + models[1]) / 2)) < 1e-9


@pytest.mark.parametrize(("length", "chunks"), [(1, 1), (SLOTS - 1, 1), (SLOTS, 2), (2 * SLOTS, 3)])
def test_chunk_count_includes_the_weight_slot(
    secret: SecretContext, length: int, chunks: int
) -> None:
    update = encrypt_update(secret, values=np.zeros(length), weight=1)

    assert update.length == length
    assert len(update.chunks) == chunks


def test_single_update_decrypts_to_its_values(secret: SecretContext) -> None:
    values = np.linspace(-100, 100, 5000, dtype=np.float32)

    result = decrypt_mean(secret, encrypt_update(secret, values=values, weight=37))

    np.testing.assert_allclose(result.mean, values.astype(np.float64), rtol=0, atol=1e-9)
    assert result.total_weight == pytest.approx(37)


def test_sum_works_with_the_secret_context_too(secret: SecretContext) -> None:
    updates = [encrypt_update(secret, values=np.array([v]), weight=1) for v in (1.0, 2.0, 6.0)]

    result = decrypt_mean(secret, sum_updates(secret, updates))

    assert result.mean[0] == pytest.approx(3.0, abs=1e-9)


def test_bytes_per_value_of_default_params(secret: SecretContext) -> None:
    update = encrypt_update(secret, values=np.zeros(SLOTS - 1), weight=1)

    per_value = update.nbytes / SLOTS
    # Measured 57.4 bytes per value (14.4x float32): 2 polynomials x 2 data primes, zstd-packed.
    assert 50 < per_value < 60
    assert update.nbytes == len(update.to_bytes())
    assert update.nbytes <= max_update_nbytes(secret.params, length=SLOTS - 1)


def test_max_update_nbytes_bounds_real_updates(secret: SecretContext) -> None:
    rng = np.random.default_rng(3)
    for length in (1, SLOTS, 3 * SLOTS + 5):
        update = encrypt_update(secret, values=rng.uniform(-100, 100, length), weight=99_999)
        bound = max_update_nbytes(secret.params, length=length)
        assert update.nbytes <= bound < 1.25 * update.nbytes + 4096


def test_max_abs_value_survives_max_summands(
    secret: SecretContext, aggregator: AggregatorContext
) -> None:
    limit = secret.params.max_abs_value
    update = encrypt_update(secret, values=np.array([limit, -limit, 1.0]), weight=1)

    result = decrypt_mean(secret, sum_updates(aggregator, [update] * MAX_SUMMANDS))

    # Without headroom the sums would wrap around the modulus and decrypt to garbage. The 1.0
    # shares a chunk with 2**37, so it carries float64 round-off relative to that (~1e-5).
    np.testing.assert_allclose(result.mean, [limit, -limit, 1.0], rtol=1e-9, atol=1e-3)
    assert result.total_weight == pytest.approx(MAX_SUMMANDS)


@pytest.mark.parametrize(
    ("values", "weight"),
    [
        (np.array([2.0**37]), 2.0),
        (np.array([-(2.0**36), 0.0]), 2.5),
        (np.array([1e300]), 1e10),
        (np.array([0.0]), 2.0**38),
    ],
)
def test_overflowing_values_raise_value_range_error(
    secret: SecretContext, values: npt.NDArray[np.float64], weight: float
) -> None:
    with pytest.raises(ValueRangeError, match="exceeds max_abs_value"):
        encrypt_update(secret, values=values, weight=weight)


def test_value_range_error_is_a_value_error(secret: SecretContext) -> None:
    with pytest.raises(ValueError, match="max_abs_value"):
        encrypt_update(secret, values=np.array([1e20]), weight=1)


@pytest.mark.parametrize(
    ("values", "weight", "error", "message"),
    [
        (np.array([1.0, np.nan]), 1.0, ValueError, r"values\[1\] is nan"),
        (np.array([np.inf]), 1.0, ValueError, "finite"),
        (np.zeros((2, 2)), 1.0, ValueError, "1-D"),
        (np.zeros(0), 1.0, ValueError, "empty"),
        (np.ones(3), 0.0, ValueError, "positive"),
        (np.ones(3), -1.0, ValueError, "positive"),
        (np.ones(3), float("nan"), ValueError, "positive"),
        (np.ones(3), float("inf"), ValueError, "positive"),
        (np.ones(3), True, TypeError, "real number"),
        (np.ones(3), "5", TypeError, "real number"),
        ([1.0, 2.0], 1.0, TypeError, "numpy array"),
        (np.array([True]), 1.0, TypeError, "real numbers"),
        (np.array([1 + 2j]), 1.0, TypeError, "real numbers"),
    ],
)
def test_encrypt_refuses_bad_input(
    secret: SecretContext, values: object, weight: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        encrypt_update(secret, values=values, weight=weight)  # type: ignore[arg-type]


def test_encrypt_refuses_a_vector_too_long_for_the_wire(secret: SecretContext) -> None:
    too_long = np.broadcast_to(np.float64(0), (MAX_LENGTH + 1,))  # a view: no memory

    with pytest.raises(OversizeError, match="exceed"):
        encrypt_update(secret, values=too_long, weight=1)


def test_encrypt_needs_the_secret_context(aggregator: AggregatorContext) -> None:
    with pytest.raises(TypeError, match="SecretContext"):
        encrypt_update(aggregator, values=np.ones(2), weight=1)  # type: ignore[arg-type]


def test_sum_refuses_empty_and_too_many(secret: SecretContext) -> None:
    update = encrypt_update(secret, values=np.ones(2), weight=1)

    with pytest.raises(ValueError, match="at least one"):
        sum_updates(secret, [])
    with pytest.raises(ValueError, match="cannot sum 1025"):
        sum_updates(secret, [update] * (MAX_SUMMANDS + 1))


def test_sum_refuses_another_study(secret: SecretContext, aggregator: AggregatorContext) -> None:
    ours = encrypt_update(secret, values=np.ones(2), weight=1)
    theirs = encrypt_update(SecretContext.generate(), values=np.ones(2), weight=1)

    with pytest.raises(ContextMismatchError, match="update 1"):
        sum_updates(aggregator, [ours, theirs])


def test_sum_refuses_different_lengths(
    secret: SecretContext, aggregator: AggregatorContext
) -> None:
    updates = [encrypt_update(secret, values=np.ones(n), weight=1) for n in (2, 3)]

    with pytest.raises(MalformedUpdateError, match="update 1 has 3 values"):
        sum_updates(aggregator, updates)


def test_sum_refuses_a_chunk_count_that_does_not_fit_the_length(
    secret: SecretContext, aggregator: AggregatorContext
) -> None:
    update = encrypt_update(secret, values=np.ones(SLOTS), weight=1)
    cut = EncryptedUpdate(fingerprint=update.fingerprint, length=SLOTS, chunks=update.chunks[:1])

    with pytest.raises(MalformedUpdateError, match="has 1 chunks"):
        sum_updates(aggregator, [update, cut])


def test_negative_total_weight_is_a_decryption_error(secret: SecretContext) -> None:
    update = encrypt_update(secret, values=np.ones(2), weight=1)
    negated = ts.ckks_vector_from(secret.tenseal_context, update.chunks[0]).neg()
    forged = EncryptedUpdate(
        fingerprint=update.fingerprint, length=2, chunks=(negated.serialize(),)
    )

    with pytest.raises(DecryptionError, match="not positive"):
        decrypt_mean(secret, forged)
