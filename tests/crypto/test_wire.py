"""EncryptedUpdate.from_bytes: every kind of bad input gets its own typed error, never TenSEAL's."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import tenseal as ts
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto import (
    AggregatorContext,
    CkksParams,
    ContextMismatchError,
    CryptoError,
    EncryptedUpdate,
    MalformedUpdateError,
    OversizeError,
    SecretContext,
    decrypt_mean,
    encrypt_update,
)
from crypto.codec import UpdateSum

HEADER = struct.Struct(">4sB32sII")
LIMIT = 1 << 24
SLOTS = 4096


@pytest.fixture(scope="module")
def secret() -> SecretContext:
    return SecretContext.generate()


@pytest.fixture(scope="module")
def aggregator(secret: SecretContext) -> AggregatorContext:
    return secret.aggregator_context()


@pytest.fixture(scope="module")
def update(secret: SecretContext) -> EncryptedUpdate:
    """Two chunks: a full one and one holding the last value and the weight."""
    values = np.random.default_rng(0).uniform(-1, 1, SLOTS + 1)
    return encrypt_update(secret, values=values, weight=12)


@pytest.fixture(scope="module")
def wire(update: EncryptedUpdate) -> bytes:
    return update.to_bytes()


def _load(data: bytes, context: SecretContext | AggregatorContext) -> EncryptedUpdate:
    return EncryptedUpdate.from_bytes(data, context=context, max_bytes=LIMIT)


def _rewrite_header(wire: bytes, **fields: object) -> bytes:
    names = ("magic", "version", "digest", "length", "chunks")
    values = dict(zip(names, HEADER.unpack_from(wire), strict=True)) | fields
    return HEADER.pack(*(values[name] for name in names)) + wire[HEADER.size :]


def test_round_trip_under_either_context(
    secret: SecretContext, aggregator: AggregatorContext, update: EncryptedUpdate, wire: bytes
) -> None:
    for context in (secret, aggregator):
        loaded = EncryptedUpdate.from_bytes(
            wire, context=context, expected_length=SLOTS + 1, max_bytes=len(wire)
        )
        assert loaded == update


def test_wire_header_is_self_describing(update: EncryptedUpdate, wire: bytes) -> None:
    magic, version, digest, length, chunks = HEADER.unpack_from(wire)

    assert (magic, version, digest.hex(), length, chunks) == (
        b"COHE",
        1,
        update.fingerprint,
        SLOTS + 1,
        2,
    )
    sizes = struct.unpack_from(">2I", wire, HEADER.size)
    assert list(sizes) == [len(chunk) for chunk in update.chunks]


@pytest.mark.parametrize("keep", [0, 3, HEADER.size - 1, HEADER.size + 2, -1])
def test_truncated_bytes(aggregator: AggregatorContext, wire: bytes, keep: int) -> None:
    with pytest.raises(MalformedUpdateError, match="truncated"):
        _load(wire[:keep], aggregator)


def test_garbage_bytes(aggregator: AggregatorContext) -> None:
    garbage = np.random.default_rng(1).bytes(5000)

    with pytest.raises(MalformedUpdateError, match="not a Cohort encrypted update"):
        _load(garbage, aggregator)


def test_flipped_magic(aggregator: AggregatorContext, wire: bytes) -> None:
    with pytest.raises(MalformedUpdateError, match="expected b'COHE'"):
        _load(b"COHF" + wire[4:], aggregator)


def test_wrong_version(aggregator: AggregatorContext, wire: bytes) -> None:
    with pytest.raises(MalformedUpdateError, match="version 2 is not supported"):
        _load(_rewrite_header(wire, version=2), aggregator)


def test_trailing_bytes(aggregator: AggregatorContext, wire: bytes) -> None:
    with pytest.raises(MalformedUpdateError, match="trailing"):
        _load(wire + b"\x00", aggregator)


def test_chunk_count_disagreeing_with_length(aggregator: AggregatorContext, wire: bytes) -> None:
    with pytest.raises(MalformedUpdateError, match="declares 3 chunks"):
        _load(_rewrite_header(wire, chunks=3), aggregator)
    with pytest.raises(MalformedUpdateError, match="declares 2 chunks"):
        _load(_rewrite_header(wire, length=5), aggregator)


def test_dropped_chunk_with_consistent_sizes(
    aggregator: AggregatorContext, update: EncryptedUpdate
) -> None:
    short = EncryptedUpdate(
        fingerprint=update.fingerprint, length=update.length, chunks=update.chunks[:1]
    )

    with pytest.raises(MalformedUpdateError, match="declares 1 chunks"):
        _load(short.to_bytes(), aggregator)


def test_zero_length_is_refused(aggregator: AggregatorContext, wire: bytes) -> None:
    with pytest.raises(MalformedUpdateError, match="no values"):
        _load(_rewrite_header(wire, length=0, chunks=1), aggregator)


def test_chunk_replaced_by_random_bytes(
    secret: SecretContext, aggregator: AggregatorContext, update: EncryptedUpdate
) -> None:
    noise = np.random.default_rng(2).bytes(len(update.chunks[1]))
    forged = EncryptedUpdate(
        fingerprint=update.fingerprint, length=update.length, chunks=(update.chunks[0], noise)
    ).to_bytes()

    with pytest.raises(MalformedUpdateError, match="chunk 1 of the update is not a CKKS"):
        _load(forged, aggregator)
    # Read without its ciphertexts, as the aggregator and hospitals read before summing or
    # decrypting: that step refuses it, and a sum stays as it was.
    unchecked = EncryptedUpdate.from_bytes(
        forged, context=aggregator, max_bytes=LIMIT, check_ciphertexts=False
    )
    running = UpdateSum(aggregator)
    with pytest.raises(MalformedUpdateError, match="chunk 1 of update 0 is not a CKKS"):
        running.add(unchecked)
    assert running.count == 0
    with pytest.raises(MalformedUpdateError, match="chunk 1 of the update is not a CKKS"):
        decrypt_mean(secret, unchecked)


def test_chunks_in_the_wrong_order(aggregator: AggregatorContext, update: EncryptedUpdate) -> None:
    swapped = EncryptedUpdate(
        fingerprint=update.fingerprint, length=update.length, chunks=update.chunks[::-1]
    )

    with pytest.raises(MalformedUpdateError, match="expected one of 4096"):
        _load(swapped.to_bytes(), aggregator)


def test_update_from_another_study(aggregator: AggregatorContext) -> None:
    other = encrypt_update(SecretContext.generate(), values=np.ones(3), weight=1)

    with pytest.raises(ContextMismatchError, match="another study"):
        _load(other.to_bytes(), aggregator)


@pytest.mark.parametrize(
    "params",
    [
        CkksParams(poly_modulus_degree=4096, coeff_mod_bit_sizes=(60, 49), scale_bits=30),
        CkksParams(coeff_mod_bit_sizes=(60, 60), scale_bits=40),
    ],
)
def test_update_under_other_params(aggregator: AggregatorContext, params: CkksParams) -> None:
    other = encrypt_update(SecretContext.generate(params=params), values=np.ones(3), weight=1)

    with pytest.raises(ContextMismatchError):
        _load(other.to_bytes(), aggregator)
    # Relabelled with this study's fingerprint: SEAL rejects the ciphertext, or (60, 60) matches
    # the lowest level of this study's (60, 40, 60) chain and only the level check catches it.
    relabelled = EncryptedUpdate(fingerprint=aggregator.fingerprint, length=3, chunks=other.chunks)
    with pytest.raises(MalformedUpdateError, match="not a CKKS ciphertext|top modulus level"):
        _load(relabelled.to_bytes(), aggregator)


def _forge(secret: SecretContext, make: Callable[[Any], Any]) -> EncryptedUpdate:
    """A one-chunk update of 3 values whose ciphertext was made by ``make`` (raw TenSEAL)."""
    vector = make(secret.tenseal_context)
    return EncryptedUpdate(fingerprint=secret.fingerprint, length=3, chunks=(vector.serialize(),))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda ctx: ts.ckks_vector(ctx, [1.0, 2.0, 3.0, 1.0], scale=2.0**40), "scale"),
        (
            lambda ctx: ts.ckks_vector(ctx, [1.0, 2.0, 3.0, 1.0], scale=2.0**30).mul([1.0] * 4),
            "scale",
        ),
        (lambda ctx: ts.ckks_vector(ctx, [1.0, 2.0, 3.0]), "expected one of 4"),
        (lambda ctx: ts.ckks_vector(ctx, [1.0] * (SLOTS + 1)), "2 ciphertext"),
    ],
)
def test_chunks_not_produced_by_this_package(
    secret: SecretContext, make: Callable[[Any], Any], message: str
) -> None:
    forged = _forge(secret, make)

    with pytest.raises(MalformedUpdateError, match=message):
        _load(forged.to_bytes(), secret)


def test_oversize_input_is_refused_before_parsing(
    aggregator: AggregatorContext, wire: bytes
) -> None:
    with pytest.raises(OversizeError, match="exceeds"):
        EncryptedUpdate.from_bytes(wire, context=aggregator, max_bytes=len(wire) - 1)
    with pytest.raises(OversizeError):
        EncryptedUpdate.from_bytes(b"\x00" * 100, context=aggregator, max_bytes=99)


def test_unexpected_length(aggregator: AggregatorContext, wire: bytes) -> None:
    with pytest.raises(MalformedUpdateError, match="another model architecture"):
        EncryptedUpdate.from_bytes(wire, context=aggregator, expected_length=10, max_bytes=LIMIT)


def test_non_bytes_input(aggregator: AggregatorContext, wire: bytes) -> None:
    with pytest.raises(TypeError, match="must be bytes"):
        _load(bytearray(wire), aggregator)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"fingerprint": "ABC"}, "64 lowercase hex"),
        ({"length": 0}, "length must be"),
        ({"length": True}, "must be an integer"),
        ({"chunks": ()}, "non-empty tuple"),
        ({"chunks": [b"x"]}, "non-empty tuple"),
        ({"chunks": (b"",)}, "non-empty bytes"),
    ],
)
def test_constructor_refuses_unwritable_fields(
    update: EncryptedUpdate, fields: dict[str, object], message: str
) -> None:
    base: dict[str, object] = {
        "fingerprint": update.fingerprint,
        "length": update.length,
        "chunks": update.chunks,
    }
    with pytest.raises(MalformedUpdateError, match=message):
        EncryptedUpdate(**(base | fields))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def small_wire(secret: SecretContext) -> bytes:
    return encrypt_update(secret, values=np.arange(5.0), weight=2).to_bytes()


@settings(max_examples=30, deadline=None)
@given(
    position=st.integers(0, 10**9),
    replacement=st.binary(min_size=1, max_size=8),
    cut=st.booleans(),
)
def test_corrupted_bytes_only_ever_raise_crypto_errors(
    aggregator: AggregatorContext, small_wire: bytes, position: int, replacement: bytes, cut: bool
) -> None:
    data = bytearray(small_wire)
    index = position % len(data)
    if cut:
        del data[index:]
    else:
        data[index : index + len(replacement)] = replacement
    # CKKS ciphertexts are malleable: a corrupted chunk may still parse. Anything else must be ours.
    with contextlib.suppress(CryptoError):
        _load(bytes(data), aggregator)
