"""Encrypted model updates: encrypt at a hospital, sum without keys, decrypt the weighted mean.

A hospital with ``n`` samples encrypts ``[x * n ..., n]``; the aggregator adds such updates
slot by slot; a hospital decrypts ``[sum(x_i * n_i) ..., sum(n_i)]`` and divides. The vector is
cut into ``ceil((length + 1) / slot_count)`` ciphertexts ("chunks"), the weight in the last slot.

Wire format of :meth:`EncryptedUpdate.to_bytes` (big-endian, version 1)::

    b"COHE" | version u8 | fingerprint: 32-byte SHA-256 digest | length u32 | chunk count u32
    | chunk count x (chunk size u32) | chunks (TenSEAL-serialized CKKS vectors)

Measured with the default parameters (N = 8192, primes 60+40+60, scale 2**50) on 2 CPU cores:
a full chunk is ~235 KB for 4096 values, ~57.4 bytes per value, 14.4 times float32 (a
100,000-value update is 5.9 MB, 14.7 times: its last chunk is mostly empty). For 100,000 values,
encrypting takes ~0.07 s, validating one received update ~0.012 s, summing three ~0.04 s
(parsing dominates), decrypting ~0.03 s; all of it scales linearly with the length.

CKKS ciphertexts are malleable and carry no checksum: a chunk altered in transit can still parse
and decrypt to wrong values. Integrity and sender authentication belong to the transport (TLS,
authenticated SuperNodes); this format checks structure, study and ciphertext shape.

>>> import numpy as np
>>> from crypto import SecretContext
>>> key = SecretContext.generate()
>>> a = encrypt_update(key, values=np.array([1.0, 2.0]), weight=3)
>>> b = encrypt_update(key, values=np.array([5.0, 6.0]), weight=1)
>>> total = sum_updates(key.aggregator_context(), [a, b])
>>> result = decrypt_mean(key, total)
>>> np.round(result.mean, 9).tolist(), round(result.total_weight, 9)
([2.0, 3.0], 4.0)
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from crypto import _backend
from crypto.errors import (
    ContextMismatchError,
    DecryptionError,
    MalformedUpdateError,
    OversizeError,
    ValueRangeError,
)
from crypto.keys import AggregatorContext, SecretContext
from crypto.params import MAX_SUMMANDS, CkksParams

#: Longest model vector an update can carry (its wire format counts values in 32 bits).
MAX_LENGTH = 2**32 - 1

_MAGIC = b"COHE"
_VERSION = 1
_HEADER = struct.Struct(">4sB32sII")
_CHUNK_SIZE = struct.Struct(">I")
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
# Serialization overhead of one chunk beyond its raw words: SEAL's header and ciphertext metadata,
# protobuf framing, and zstd's worst-case expansion of incompressible input (1/256 + a block).
_CHUNK_OVERHEAD_BYTES = 1024


@dataclass(frozen=True)
class EncryptedUpdate:
    """``[values * weight ..., weight]`` as CKKS ciphertexts of one study.

    Attributes:
        fingerprint: The study context's fingerprint (:attr:`crypto.SecretContext.fingerprint`).
        length: Number of model values, not counting the weight.
        chunks: Serialized ciphertexts, ``slot_count`` slots each; the weight is the last slot.
    """

    fingerprint: str
    length: int
    chunks: tuple[bytes, ...] = field(repr=False)

    def __post_init__(self) -> None:
        """Refuse fields that could not be written to or read from the wire format."""
        if not isinstance(self.fingerprint, str) or not _FINGERPRINT.fullmatch(self.fingerprint):
            raise MalformedUpdateError(
                f"fingerprint must be 64 lowercase hex digits, got {self.fingerprint!r}"
            )
        if isinstance(self.length, bool) or not isinstance(self.length, int):
            raise MalformedUpdateError(f"length must be an integer, got {self.length!r}")
        if not 1 <= self.length <= MAX_LENGTH:
            raise MalformedUpdateError(f"length must be 1 to {MAX_LENGTH}, got {self.length}")
        if not isinstance(self.chunks, tuple) or not self.chunks:
            raise MalformedUpdateError("chunks must be a non-empty tuple of bytes")
        if not all(isinstance(chunk, bytes) and chunk for chunk in self.chunks):
            raise MalformedUpdateError("every chunk must be non-empty bytes")

    @property
    def nbytes(self) -> int:
        """Size of :meth:`to_bytes`'s output, without building it."""
        return framed_nbytes(_HEADER.size, self.chunks)

    def to_bytes(self) -> bytes:
        """The self-describing wire form (see the module docstring), read by :meth:`from_bytes`."""
        header = _HEADER.pack(
            _MAGIC, _VERSION, bytes.fromhex(self.fingerprint), self.length, len(self.chunks)
        )
        return framed(header, self.chunks)

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        *,
        context: SecretContext | AggregatorContext,
        expected_length: int | None = None,
        max_bytes: int,
        check_ciphertexts: bool = True,
    ) -> EncryptedUpdate:
        """Parse and fully validate an update, including every ciphertext, under ``context``.

        Args:
            data: Bytes from :meth:`to_bytes`, typically received from another party.
            context: The study's context (either side); the update must carry its fingerprint.
            expected_length: The model's number of values, when the caller knows it.
            max_bytes: Largest input accepted; see :func:`max_update_nbytes`.
            check_ciphertexts: False leaves the ciphertexts to the step that loads them next:
                see :func:`crypto.codec.read_update`.

        Raises:
            OversizeError: ``data`` is longer than ``max_bytes``.
            ContextMismatchError: The update belongs to another study or other parameters.
            MalformedUpdateError: Truncated or trailing bytes, bad magic or version, wrong chunk
                count or length, or a chunk that is not a ciphertext of this study.
        """
        _require_context(context)
        require_within(data, max_bytes=max_bytes)
        length, chunk_count = _read_header(data, context=context)
        if expected_length is not None and length != expected_length:
            raise MalformedUpdateError(
                f"update carries {length} values but the model has {expected_length}: it was "
                "made for another model architecture"
            )
        update = cls(
            fingerprint=context.fingerprint,
            length=length,
            chunks=read_chunks(data, offset=_HEADER.size, chunk_count=chunk_count),
        )
        # Parse every ciphertext now, so that nothing malformed outlives this call, unless the
        # caller's next step does.
        if check_ciphertexts:
            for _ in _load_chunks(context, update, name="the update"):
                pass
        return update


@dataclass(frozen=True, eq=False)
class DecryptedMean:
    """The weighted mean of the summed updates and the total weight behind it.

    Attributes:
        mean: ``sum(x_i * w_i) / sum(w_i)``, float64, one value per model parameter.
        total_weight: ``sum(w_i)`` as decrypted (with CKKS's ~1e-12 absolute error).
    """

    mean: npt.NDArray[np.float64]
    total_weight: float


def encrypt_update(
    context: SecretContext, *, values: npt.NDArray[np.floating[Any]], weight: float
) -> EncryptedUpdate:
    """Encrypt ``values * weight`` and ``weight`` for summing with other hospitals' updates.

    Args:
        context: The study's secret context.
        values: The model as a 1-D array of finite real numbers.
        weight: The update's positive weight, usually the number of training samples.

    Raises:
        TypeError: ``values`` is not a numeric numpy array.
        ValueError: ``values`` is not 1-D, empty or non-finite, or ``weight`` is not positive.
        OversizeError: ``values`` is longer than :data:`MAX_LENGTH`.
        ValueRangeError: ``weight`` or some ``|value * weight|`` exceeds
            ``context.params.max_abs_value``.

    >>> import numpy as np
    >>> from crypto import SecretContext
    >>> update = encrypt_update(SecretContext.generate(), values=np.zeros(4096), weight=10)
    >>> update.length, len(update.chunks)
    (4096, 2)
    """
    if not isinstance(context, SecretContext):
        raise TypeError("encrypting needs the hospital's SecretContext")
    vector = model_vector(values)
    weight = _positive_weight(weight)
    with np.errstate(over="ignore"):
        weighted = vector * weight
    _check_range(weighted, weight=weight, limit=context.params.max_abs_value)
    plain = np.append(weighted, weight)
    slots = context.params.slot_count
    chunks = tuple(
        _backend.encrypt_chunk(context.tenseal_context, plain[start : start + slots])
        for start in range(0, plain.size, slots)
    )
    return EncryptedUpdate(fingerprint=context.fingerprint, length=vector.size, chunks=chunks)


class EncryptedSum:
    """A sum of updates that grows one update at a time; needs no key.

    See :class:`crypto.PackedSum`: an update that fails is refused whole, the sum unchanged.
    """

    def __init__(self, context: AggregatorContext | SecretContext) -> None:
        """An empty sum under the study's context (keyless or not)."""
        _require_context(context)
        self._context = context
        self._length: int | None = None
        self._totals: list[Any] = []
        self.count = 0

    def add(self, update: EncryptedUpdate) -> None:
        """Add ``update`` to the sum.

        Raises:
            ValueError: The sum already holds :data:`crypto.MAX_SUMMANDS` updates.
            ContextMismatchError: The update belongs to another study.
            MalformedUpdateError: Another length than the first update's, or a chunk that is not
                a ciphertext of this study.
        """
        name = f"update {self.count}"
        if self._length is not None and update.length != self._length:
            raise MalformedUpdateError(
                f"{name} has {update.length} values, update 0 has {self._length}: they were "
                "made for different models"
            )
        _require_room_for(self.count + 1)
        loaded = list(_load_chunks(self._context, update, name=name))
        if self._length is None:
            self._length, self._totals = update.length, loaded
        else:
            for total, vector in zip(self._totals, loaded, strict=True):
                _backend.add_into(total, vector, name=name)
        self.count += 1

    def total(self) -> EncryptedUpdate:
        """The sum so far, as an update.

        Raises:
            ValueError: No update was added yet.
        """
        if self._length is None:
            raise ValueError("the sum holds no update yet")
        return EncryptedUpdate(
            fingerprint=self._context.fingerprint,
            length=self._length,
            chunks=tuple(_backend.serialize_vector(total) for total in self._totals),
        )


def sum_updates(
    context: AggregatorContext | SecretContext, updates: Sequence[EncryptedUpdate]
) -> EncryptedUpdate:
    """Add updates slot by slot; needs no key, so the aggregator's keyless context suffices.

    Raises:
        ValueError: No updates, or more than :data:`crypto.MAX_SUMMANDS`.
        ContextMismatchError: An update belongs to another study.
        MalformedUpdateError: Updates of different lengths, or a chunk that is not a
            ciphertext of this study.
    """
    if not updates:
        raise ValueError("sum_updates needs at least one update")
    _require_room_for(len(updates))
    running = EncryptedSum(context)
    for update in updates:
        running.add(update)
    return running.total()


def decrypt_mean(context: SecretContext, update: EncryptedUpdate) -> DecryptedMean:
    """Decrypt a (summed) update and divide its value sums by its total weight.

    Raises:
        ContextMismatchError: The update belongs to another study.
        MalformedUpdateError: A chunk is not a ciphertext of this study.
        DecryptionError: The decrypted total weight is not positive, so the update cannot be a
            sum of this study's updates.
    """
    if not isinstance(context, SecretContext):
        raise TypeError("decrypting needs the hospital's SecretContext; the aggregator has no key")
    vectors = _load_chunks(context, update, name="the update")
    sizes = _chunk_sizes(update.length, slot_count=context.params.slot_count)
    plain = np.concatenate(
        [
            _backend.decrypt_vector(vector, size=size, name=f"chunk {index}")
            for index, (vector, size) in enumerate(zip(vectors, sizes, strict=True))
        ]
    )
    total_weight = float(plain[-1])
    if not total_weight > 0:
        raise DecryptionError(
            f"the decrypted total weight is {total_weight}, not positive: this is not a sum of "
            "this study's updates (forged chunks, or values beyond max_abs_value)"
        )
    return DecryptedMean(mean=plain[:-1] / total_weight, total_weight=total_weight)


def max_update_nbytes(params: CkksParams, *, length: int) -> int:
    """An upper bound on the wire size of an update of ``length`` values: a ``max_bytes``.

    >>> from crypto import CkksParams
    >>> max_update_nbytes(CkksParams(), length=100_000) / 100_000 < 70
    True
    """
    chunk_count = len(_chunk_sizes(length, slot_count=params.slot_count))
    return max_framed_nbytes(_HEADER.size, chunk_count=chunk_count, params=params)


def max_framed_nbytes(header_size: int, *, chunk_count: int, params: CkksParams) -> int:
    """An upper bound on a framed update of ``chunk_count`` full ciphertexts under ``params``."""
    data_primes = len(params.coeff_mod_bit_sizes) - 1
    raw_chunk = 2 * params.poly_modulus_degree * data_primes * 8
    chunk_bound = raw_chunk + raw_chunk // 256 + _CHUNK_OVERHEAD_BYTES
    return header_size + chunk_count * (_CHUNK_SIZE.size + chunk_bound)


def framed(header: bytes, chunks: Sequence[bytes]) -> bytes:
    """The layout both update formats share: a header, each chunk's size, then the chunks."""
    sizes = b"".join(_CHUNK_SIZE.pack(len(chunk)) for chunk in chunks)
    return b"".join((header, sizes, *chunks))


def framed_nbytes(header_size: int, chunks: Sequence[bytes]) -> int:
    """Size of :func:`framed`'s output, without building it."""
    return header_size + sum(_CHUNK_SIZE.size + len(chunk) for chunk in chunks)


def require_within(data: object, *, max_bytes: int) -> None:
    """Refuse received update bytes that are not bytes, or longer than ``max_bytes``."""
    if not isinstance(data, bytes):
        raise TypeError(f"update bytes must be bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise OversizeError(
            f"encrypted update of {len(data)} bytes exceeds the {max_bytes}-byte limit"
        )


def _chunk_sizes(length: int, *, slot_count: int) -> list[int]:
    slots = length + 1
    return [min(slot_count, slots - start) for start in range(0, slots, slot_count)]


def _load_chunks(
    context: SecretContext | AggregatorContext, update: EncryptedUpdate, *, name: str
) -> Iterator[Any]:
    """Check ``update`` against ``context`` now; load and validate its chunks lazily."""
    require_fingerprint(update.fingerprint, context=context, name=name)
    sizes = _chunk_sizes(update.length, slot_count=context.params.slot_count)
    if len(update.chunks) != len(sizes):
        raise MalformedUpdateError(
            f"{name} has {len(update.chunks)} chunks; {update.length} values and a weight "
            f"need {len(sizes)} at {context.params.slot_count} slots per chunk"
        )
    return (
        _backend.load_chunk(
            context.tenseal_context, chunk, size=size, name=f"chunk {index} of {name}"
        )
        for index, (chunk, size) in enumerate(zip(update.chunks, sizes, strict=True))
    )


def _require_room_for(summands: int) -> None:
    if summands > MAX_SUMMANDS:
        raise ValueError(
            f"cannot sum {summands} updates: max_abs_value only leaves room for "
            f"{MAX_SUMMANDS} without overflowing the CKKS modulus"
        )


def _require_context(context: object) -> None:
    if not isinstance(context, SecretContext | AggregatorContext):
        raise TypeError(f"context must be a study context, got {type(context).__name__}")


def require_fingerprint(
    fingerprint: str, *, context: SecretContext | AggregatorContext, name: str
) -> None:
    """Refuse an update made under another study's context (or other parameters)."""
    _require_context(context)
    if fingerprint != context.fingerprint:
        raise ContextMismatchError(
            f"{name} was made under context {fingerprint[:16]}..., not this study's "
            f"{context.fingerprint[:16]}...: it belongs to another study or other parameters"
        )


def _read_header(data: bytes, *, context: SecretContext | AggregatorContext) -> tuple[int, int]:
    if len(data) < _HEADER.size:
        raise MalformedUpdateError(
            f"update is truncated: {len(data)} bytes, the header alone has {_HEADER.size}"
        )
    magic, version, digest, length, chunk_count = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise MalformedUpdateError(
            f"not a Cohort encrypted update: starts with {magic!r}, expected {_MAGIC!r}"
        )
    if version != _VERSION:
        raise MalformedUpdateError(
            f"update format version {version} is not supported (this library reads version "
            f"{_VERSION}): the sender runs another release of the crypto package"
        )
    require_fingerprint(digest.hex(), context=context, name="update")
    if length < 1:
        raise MalformedUpdateError("update carries no values")
    expected_count = len(_chunk_sizes(length, slot_count=context.params.slot_count))
    if chunk_count != expected_count:
        raise MalformedUpdateError(
            f"update declares {chunk_count} chunks; {length} values and a weight need "
            f"{expected_count} at {context.params.slot_count} slots per chunk"
        )
    return length, chunk_count


def read_chunks(data: bytes, *, offset: int, chunk_count: int) -> tuple[bytes, ...]:
    """The ``chunk_count`` size-prefixed chunks that follow a header of ``offset`` bytes."""
    body = offset + _CHUNK_SIZE.size * chunk_count
    if len(data) < body:
        raise MalformedUpdateError(
            f"update is truncated: {len(data)} bytes, its header and chunk sizes need {body}"
        )
    sizes = struct.unpack_from(f">{chunk_count}I", data, offset)
    if sum(sizes) != len(data) - body:
        raise MalformedUpdateError(
            f"update chunks declare {sum(sizes)} bytes but {len(data) - body} follow: the "
            "bytes are truncated or carry trailing data"
        )
    chunks = []
    for size in sizes:
        chunks.append(data[body : body + size])
        body += size
    return tuple(chunks)


def model_vector(values: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float64]:
    """``values`` as float64, checked to be a finite, non-empty 1-D numeric vector."""
    if not isinstance(values, np.ndarray):
        raise TypeError(f"values must be a numpy array, got {type(values).__name__}")
    if not (np.issubdtype(values.dtype, np.floating) or np.issubdtype(values.dtype, np.integer)):
        raise TypeError(f"values must be real numbers, got dtype {values.dtype}")
    if values.ndim != 1:
        raise ValueError(f"values must be a 1-D vector, got shape {values.shape}")
    if values.size == 0:
        raise ValueError("values is empty: there is no model to encrypt")
    if values.size > MAX_LENGTH:
        raise OversizeError(f"{values.size} values exceed the {MAX_LENGTH} an update can carry")
    vector = values.astype(np.float64)
    finite = np.isfinite(vector)
    if not finite.all():
        index = int(np.argmin(finite))
        raise ValueError(f"values[{index}] is {vector[index]}: every value must be finite")
    return vector


def _positive_weight(weight: float) -> float:
    if isinstance(weight, bool) or not isinstance(weight, int | float | np.integer | np.floating):
        raise TypeError(f"weight must be a real number, got {weight!r}")
    value = float(weight)
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"weight must be finite and positive, got {weight!r}")
    return value


def _check_range(weighted: npt.NDArray[np.float64], *, weight: float, limit: float) -> None:
    advice = (
        "scale the values down, or use CkksParams with more data-modulus bits or fewer scale_bits"
    )
    if weight > limit:
        raise ValueRangeError(f"weight {weight} exceeds max_abs_value {limit}: {advice}")
    magnitudes = np.abs(weighted)
    index = int(np.argmax(magnitudes))
    if magnitudes[index] > limit:
        raise ValueRangeError(
            f"values[{index}] * weight = {weighted[index]} exceeds max_abs_value {limit} "
            f"(CKKS would silently wrap it around): {advice}"
        )
