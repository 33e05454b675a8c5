"""Packed updates: the decrypted mean stays within the quantization bound, fields never carry,
a hospital sends about 1 times float32, and malformed input is refused by name."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto import (
    AggregatorContext,
    CkksParams,
    ContextMismatchError,
    DecryptionError,
    MalformedUpdateError,
    OversizeError,
    ParameterError,
    SecretContext,
    ValueRangeError,
    _backend,
)
from crypto.packing import (
    PACKED_PARAMS,
    PackedSum,
    PackedUpdate,
    Quantization,
    decrypt_packed_mean,
    encrypt_packed,
    max_packed_nbytes,
    sum_packed_updates,
)

SLOTS = PACKED_PARAMS.slot_count
VALUES_PER_CHUNK = 4 * SLOTS  # two fields in each of a slot's real and imaginary parts
SCHEME = Quantization(clip=8.0)


@pytest.fixture(scope="module")
def secret() -> SecretContext:
    return SecretContext.generate(params=PACKED_PARAMS)


@pytest.fixture(scope="module")
def aggregator(secret: SecretContext) -> AggregatorContext:
    return AggregatorContext.from_bytes(secret.aggregator_context().to_bytes())


def received(update: PackedUpdate, context: SecretContext | AggregatorContext) -> PackedUpdate:
    """The update as the other side parses it off the wire."""
    return PackedUpdate.from_bytes(
        update.to_bytes(), context=context, max_bytes=max_packed_nbytes(update.length)
    )


def weighted_mean(values: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """The mean a packed sum estimates: weights as quantized to value_bits bits."""
    shares = [round(w * SCHEME.levels) / SCHEME.levels for w in weights]
    return sum(s * v for s, v in zip(shares, values, strict=True)) / sum(shares)


@settings(max_examples=12, deadline=None)
@given(
    length=st.sampled_from(
        [1, 2, 3, 5, VALUES_PER_CHUNK - 5, VALUES_PER_CHUNK - 4, VALUES_PER_CHUNK + 7]
    ),
    weights=st.lists(st.floats(0.01, 1.0), min_size=1, max_size=6),
    seed=st.integers(0, 2**32 - 1),
)
def test_the_decrypted_mean_stays_within_the_quantization_bound(
    secret: SecretContext,
    aggregator: AggregatorContext,
    length: int,
    weights: list[float],
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    values = [rng.uniform(-SCHEME.clip, SCHEME.clip, length) for _ in weights]
    updates = [
        received(encrypt_packed(secret, values=v, weight=w, quantization=SCHEME), aggregator)
        for v, w in zip(values, weights, strict=True)
    ]

    result = decrypt_packed_mean(secret, received(sum_packed_updates(aggregator, updates), secret))

    shares = [round(w * SCHEME.levels) / SCHEME.levels for w in weights]
    error = np.abs(result.mean - weighted_mean(values, weights)).max()
    assert error <= SCHEME.error_bound(shares)
    assert result.total_weight == pytest.approx(sum(shares), abs=1e-12)


def test_the_most_summands_at_the_extremes_never_carry_between_fields(
    secret: SecretContext, aggregator: AggregatorContext
) -> None:
    # Every field at its largest value, from 64 hospitals: any carry would corrupt a neighbour.
    # (Each hospital encrypts its own: one ciphertext added to itself 64 times would also
    # multiply its noise by 64, where independent noises only grow by 8.)
    extremes = np.tile([SCHEME.clip, -SCHEME.clip, -SCHEME.clip, SCHEME.clip], 25)
    updates = [
        encrypt_packed(secret, values=extremes, weight=1.0, quantization=SCHEME)
        for _ in range(SCHEME.max_summands)
    ]

    total = sum_packed_updates(aggregator, updates)

    result = decrypt_packed_mean(secret, total)
    np.testing.assert_allclose(result.mean, extremes, atol=1e-9)
    assert result.total_weight == SCHEME.max_summands
    with pytest.raises(ValueError, match="6 headroom bits leave room for 64"):
        sum_packed_updates(aggregator, [*updates, updates[0]])


def test_a_running_sum_refuses_a_bad_update_whole_and_keeps_the_others(
    secret: SecretContext, aggregator: AggregatorContext
) -> None:
    length = VALUES_PER_CHUNK + 7  # two chunks
    good = [
        encrypt_packed(secret, values=np.full(length, value), weight=1.0, quantization=SCHEME)
        for value in (1.0, 3.0)
    ]
    # Its first chunk is a sound ciphertext; the second is found wrong only once loaded: read
    # without its ciphertexts, as the aggregator reads the updates it sums.
    broken = PackedUpdate.from_bytes(
        PackedUpdate(
            fingerprint=secret.fingerprint,
            length=length,
            quantization=SCHEME,
            chunks=(good[0].chunks[0], b"not a ciphertext"),
        ).to_bytes(),
        context=aggregator,
        max_bytes=max_packed_nbytes(length),
        check_ciphertexts=False,
    )
    running = PackedSum(aggregator)

    running.add(good[0])
    with pytest.raises(MalformedUpdateError, match="chunk 1 of update 1"):
        running.add(broken)
    running.add(good[1])

    assert running.count == 2
    result = decrypt_packed_mean(secret, running.total())
    np.testing.assert_allclose(result.mean, 2.0, atol=SCHEME.error_bound([1.0, 1.0]))
    assert result.total_weight == 2
    with pytest.raises(MalformedUpdateError, match="chunk 1 of the update"):
        decrypt_packed_mean(secret, broken)


def test_a_hospital_sends_one_times_float32_and_the_aggregate_two(
    secret: SecretContext, aggregator: AggregatorContext
) -> None:
    length = 4 * VALUES_PER_CHUNK - 2  # four full chunks of values, the weight in a fifth
    update = encrypt_packed(secret, values=np.zeros(length), weight=1.0, quantization=SCHEME)
    total = sum_packed_updates(aggregator, [update, update])

    assert update.nbytes / (4 * length) < 1.26  # the fifth, nearly empty chunk costs 1/4
    assert max(len(chunk) for chunk in update.chunks) / (4 * VALUES_PER_CHUNK) < 1.01
    assert max(len(chunk) for chunk in total.chunks) / (4 * VALUES_PER_CHUNK) < 2.01
    assert total.nbytes <= max_packed_nbytes(length)


def test_values_outside_the_clip_and_bad_weights_are_refused(secret: SecretContext) -> None:
    with pytest.raises(ValueRangeError, match=r"values\[1\] = 9.5 lies outside"):
        encrypt_packed(secret, values=np.array([0.0, 9.5]), weight=1.0, quantization=SCHEME)
    for weight, message in [(0.0, "in \\(0, 1\\]"), (1.5, "in \\(0, 1\\]"), (1e-9, "smallest")]:
        with pytest.raises(ValueError, match=message):
            encrypt_packed(secret, values=np.zeros(3), weight=weight, quantization=SCHEME)
    with pytest.raises(ValueError, match="finite"):
        encrypt_packed(secret, values=np.array([np.nan]), weight=1.0, quantization=SCHEME)


def test_packing_needs_the_packed_study_parameters() -> None:
    unpacked = SecretContext.generate(params=CkksParams())
    with pytest.raises(ParameterError, match="packed updates need"):
        encrypt_packed(unpacked, values=np.zeros(3), weight=1.0, quantization=SCHEME)


def test_quantizations_that_do_not_fit_a_slot_are_refused() -> None:
    with pytest.raises(ParameterError, match="exceed the 42 bits"):
        Quantization(clip=1.0, value_bits=16, headroom_bits=6)
    with pytest.raises(ParameterError, match="clip must be finite"):
        Quantization(clip=float("inf"))


def test_the_aggregator_cannot_decrypt(
    aggregator: AggregatorContext, secret: SecretContext
) -> None:
    update = encrypt_packed(secret, values=np.zeros(3), weight=1.0, quantization=SCHEME)
    with pytest.raises(TypeError, match="the aggregator has no key"):
        decrypt_packed_mean(aggregator, update)  # type: ignore[arg-type]


def test_malformed_bytes_are_refused_by_name(
    secret: SecretContext, aggregator: AggregatorContext
) -> None:
    data = encrypt_packed(secret, values=np.zeros(5), weight=1.0, quantization=SCHEME).to_bytes()
    limit = max_packed_nbytes(5)
    other_study = SecretContext.generate(params=PACKED_PARAMS).aggregator_context()
    cases: list[tuple[bytes, SecretContext | AggregatorContext, type[Exception], str]] = [
        (data[:20], aggregator, MalformedUpdateError, "truncated"),
        (b"COHE" + data[4:], aggregator, MalformedUpdateError, "not a Cohort packed update"),
        (data + b"x", aggregator, MalformedUpdateError, "trailing"),
        (data, other_study, ContextMismatchError, "another study"),
        (data[: len(data) // 2], aggregator, MalformedUpdateError, "truncated"),
    ]
    for (bad, context, error, message), check in itertools.product(cases, (True, False)):
        with pytest.raises(error, match=message):
            PackedUpdate.from_bytes(bad, context=context, max_bytes=limit, check_ciphertexts=check)
    with pytest.raises(OversizeError):
        PackedUpdate.from_bytes(data, context=aggregator, max_bytes=len(data) - 1)


def test_updates_of_another_quantization_are_not_summed(
    secret: SecretContext, aggregator: AggregatorContext
) -> None:
    a = encrypt_packed(secret, values=np.zeros(5), weight=1.0, quantization=SCHEME)
    b = encrypt_packed(secret, values=np.zeros(5), weight=1.0, quantization=Quantization(clip=4))
    with pytest.raises(MalformedUpdateError, match="does not match update 0"):
        sum_packed_updates(aggregator, [a, b])


def test_a_slot_that_is_no_integer_fails_decryption(secret: SecretContext) -> None:
    # A ciphertext of this study that no packed encoder made: half-integers in its slots.
    (forged,) = _backend.encrypt_seeded(secret.tenseal_context, [np.full(3, 0.5 + 0j)])
    update = PackedUpdate(
        fingerprint=secret.fingerprint, length=3, quantization=SCHEME, chunks=(forged,)
    )
    with pytest.raises(DecryptionError, match="not a non-negative integer"):
        decrypt_packed_mean(secret, update)


@pytest.mark.parametrize(
    ("slots", "message"),
    [
        ([1 + 0j, -2 + 0j, 1 + 0j], r"word 2 decrypted to -[12]\.\d+, not a non-negative integer"),
        ([2.0**42 + 0j, 1 + 0j], "more than two fields"),
        ([1 + 0j, 1 + 1j], r"weight slot is 1 \+ 1i"),
        ([1 + 0j, 0j], r"weight slot is 0 \+ 0i"),
    ],
)
def test_integer_slots_no_packed_sum_can_hold_fail_decryption(
    secret: SecretContext, slots: list[complex], message: str
) -> None:
    # Forged ciphertexts of this study: whole numbers, but no sum of packed updates makes them.
    (forged,) = _backend.encrypt_seeded(secret.tenseal_context, [np.array(slots)])
    update = PackedUpdate(
        fingerprint=secret.fingerprint,
        length=4 * (len(slots) - 1),
        quantization=SCHEME,
        chunks=(forged,),
    )
    with pytest.raises(DecryptionError, match=message):
        decrypt_packed_mean(secret, update)


def test_a_tampered_ciphertext_fails_decryption(secret: SecretContext) -> None:
    # CKKS is malleable: altered bytes still parse. Unpacked, they would decrypt to wrong values;
    # packed, the slots are no longer integers and decryption says so. Which slot it names
    # depends on the encryption's randomness: in a few percent of runs all four words of this
    # small update land near non-negative integers, and the weight slot, a huge one, is refused.
    data = encrypt_packed(secret, values=np.zeros(5), weight=1.0, quantization=SCHEME).to_bytes()
    tampered = data[:-40] + bytes(40)
    update = PackedUpdate.from_bytes(tampered, context=secret, max_bytes=max_packed_nbytes(5))
    with pytest.raises(DecryptionError, match="not a (non-negative|positive) integer"):
        decrypt_packed_mean(secret, update)
