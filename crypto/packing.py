"""Quantized updates, four values per CKKS slot: 1 times float32 on the wire instead of 14.

One real value per CKKS slot costs at least ~7.5 times float32 whatever the parameters. Model
updates do not need CKKS's 50-bit precision, so a packed update quantizes each value to
``value_bits`` (15) bits and packs them tightly. A CKKS slot is a complex number: its real and its
imaginary part are each one *word*, and a word holds two fields of ``value_bits + headroom_bits``
(21) bits. The headroom absorbs the sum of up to ``2**headroom_bits`` (64) hospitals' fields
without a carry into the neighbouring field.

Encoding, for a hospital with weight ``w`` in (0, 1] (its share of the round's weight unit)::

    step = 2 * clip / (2**value_bits - 1)
    q    = round((x + clip) / step)            in [0, 2**value_bits - 1], x in [-clip, clip]
    W    = round(w * (2**value_bits - 1))       in [1, 2**value_bits - 1]
    c    = round(W * q / (2**value_bits - 1))   in [0, 2**value_bits - 1]
    word = c[2i] * 2**field_bits + c[2i + 1]
    slot = word[2j] + 1j * word[2j + 1];        the last slot holds W (+ 0j)

No carry, ever: with at most ``K <= 2**headroom_bits`` updates summed, every field holds at most
``K * (2**value_bits - 1) < 2**field_bits``; :func:`sum_packed_updates` refuses more summands.
A word stays below ``2**(2 * field_bits) = 2**42``, so encoded at scale ``2**16`` a slot's
magnitude is under ``2**58.5``, within half the 60-bit data prime (decoding is centred); words of
``2**44`` at scale ``2**15`` were measured to decode wrongly near that edge.

Error bound (the quantization bound), per model value, against the ``w'``-weighted mean, where
``w' = W / (2**value_bits - 1)``::

    |decrypted mean - sum(w'_k x_k) / sum(w'_k)|  <=  step / 2 + step * K / (2 * sum(w'_k))

(``step / 2`` from quantizing each ``x_k``, at most ``1/2`` per hospital from rounding ``w' q``.)
With equal weights (``w = 1``) that is ``step``, 4.9e-4 for ``clip = 8``. CKKS noise does not add
to it: a decrypted word is an integer plus noise of at most ~0.1 (measured with 64 summands at
scale ``2**16``, real and imaginary parts alike), and decryption rounds it away, refusing any word
further than :data:`NOISE_MARGIN` from an integer.

Bytes: hospitals send *seeded* ciphertexts (SEAL replaces a symmetric ciphertext's uniformly
random half with its PRNG seed), 65.7 KB per 16,384 values, 1.0 times float32. A sum of seeded
ciphertexts is no longer seeded: the aggregate travels at full size, 2.0 times float32.

Wire format of :meth:`PackedUpdate.to_bytes` (big-endian)::

    b"COHQ" | version u8 | fingerprint: 32 bytes | length u32 | clip f64 | value bits u8
    | headroom bits u8 | chunk count u32 | chunk count x (chunk size u32) | SEAL ciphertexts

>>> import numpy as np
>>> key = SecretContext.generate(params=PACKED_PARAMS)
>>> scheme = Quantization(clip=4.0)
>>> a = encrypt_packed(key, values=np.array([1.0, -2.0, 3.0]), weight=1.0, quantization=scheme)
>>> b = encrypt_packed(key, values=np.array([3.0, 2.0, -1.0]), weight=0.5, quantization=scheme)
>>> total = sum_packed_updates(key.aggregator_context(), [a, b])
>>> result = decrypt_packed_mean(key, total)
>>> bool(np.abs(result.mean - [5 / 3, -2 / 3, 5 / 3]).max() <= scheme.error_bound([1.0, 0.5]))
True
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from crypto import _backend
from crypto.errors import (
    DecryptionError,
    MalformedUpdateError,
    ParameterError,
    ValueRangeError,
)
from crypto.keys import AggregatorContext, SecretContext
from crypto.params import CkksParams
from crypto.updates import (
    MAX_LENGTH,
    DecryptedMean,
    framed,
    framed_nbytes,
    max_framed_nbytes,
    model_vector,
    read_chunks,
    require_fingerprint,
    require_within,
)

#: The study parameters for packed updates: one 60-bit data prime holds two 21-bit fields at
#: scale 2**16 (see the module docstring), 128-bit secure at N = 8192.
PACKED_PARAMS = CkksParams(poly_modulus_degree=8192, coeff_mod_bit_sizes=(60, 40), scale_bits=16)

#: How far a decrypted word may lie from an integer. Measured noise: ~0.1 with 64 summands.
NOISE_MARGIN = 0.4

_VALUES_PER_SLOT = 4  # two fields in the real part, two in the imaginary
_MAGIC = b"COHQ"
_VERSION = 1
_HEADER = struct.Struct(">4sB32sIdBBI")
# Both fields of a word together, as an integer, must stay exact in float64 and under half the
# data prime at the packed scale.
_WORD_BITS = 42


@dataclass(frozen=True)
class Quantization:
    """How values become integers: the clipping range and the bits of each packed field.

    Attributes:
        clip: Values must lie in ``[-clip, clip]``; larger ones are refused, never clipped.
        value_bits: Bits of one quantized value.
        headroom_bits: Extra bits per field, so that ``2**headroom_bits`` updates can be summed.
    """

    clip: float
    value_bits: int = 15
    headroom_bits: int = 6

    def __post_init__(self) -> None:
        """Refuse a quantization whose two fields would not fit one word."""
        if not (isinstance(self.clip, int | float) and math.isfinite(self.clip) and self.clip > 0):
            raise ParameterError(f"clip must be finite and positive, got {self.clip!r}")
        for name in ("value_bits", "headroom_bits"):
            bits = getattr(self, name)
            if isinstance(bits, bool) or not isinstance(bits, int) or bits < 1:
                raise ParameterError(f"{name} must be a positive integer, got {bits!r}")
        if 2 * self.field_bits > _WORD_BITS:
            raise ParameterError(
                f"two fields of {self.value_bits} + {self.headroom_bits} bits exceed the "
                f"{_WORD_BITS} bits a packed word holds"
            )

    @property
    def field_bits(self) -> int:
        """Bits of one packed field: a value and its headroom."""
        return self.value_bits + self.headroom_bits

    @property
    def levels(self) -> int:
        """The largest quantized value, ``2**value_bits - 1``."""
        return (1 << self.value_bits) - 1

    @property
    def step(self) -> float:
        """The distance between neighbouring quantized values."""
        return 2 * self.clip / self.levels

    @property
    def max_summands(self) -> int:
        """Most updates that can be summed without a carry between fields."""
        return 1 << self.headroom_bits

    def error_bound(self, weights: Sequence[float]) -> float:
        """Largest error of a decrypted mean of updates with these weights (module docstring)."""
        return self.step / 2 + self.step * len(weights) / (2 * sum(weights))


@dataclass(frozen=True)
class PackedUpdate:
    """Quantized ``[values * weight ..., weight]``, four values per slot, as SEAL ciphertexts.

    Attributes:
        fingerprint: The study context's fingerprint.
        length: Number of model values, not counting the weight.
        quantization: How the values were quantized; summed updates must share it.
        chunks: Serialized ciphertexts: seeded when fresh from a hospital, full once summed.
    """

    fingerprint: str
    length: int
    quantization: Quantization
    chunks: tuple[bytes, ...] = field(repr=False)

    def __post_init__(self) -> None:
        """Refuse fields that could not be written to the wire format."""
        if not 1 <= self.length <= MAX_LENGTH:
            raise MalformedUpdateError(f"length must be 1 to {MAX_LENGTH}, got {self.length}")
        if not self.chunks or not all(isinstance(c, bytes) and c for c in self.chunks):
            raise MalformedUpdateError("chunks must be a non-empty tuple of non-empty bytes")

    @property
    def nbytes(self) -> int:
        """Size of :meth:`to_bytes`'s output, without building it."""
        return framed_nbytes(_HEADER.size, self.chunks)

    def to_bytes(self) -> bytes:
        """The self-describing wire form (module docstring), read by :meth:`from_bytes`."""
        scheme = self.quantization
        header = _HEADER.pack(
            _MAGIC,
            _VERSION,
            bytes.fromhex(self.fingerprint),
            self.length,
            scheme.clip,
            scheme.value_bits,
            scheme.headroom_bits,
            len(self.chunks),
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
    ) -> PackedUpdate:
        """Parse and fully validate an update, every ciphertext included, under ``context``.

        ``check_ciphertexts=False`` leaves the ciphertexts to the step that loads them next: see
        :func:`crypto.codec.read_update`.

        Raises:
            OversizeError: ``data`` is longer than ``max_bytes``.
            ContextMismatchError: The update belongs to another study or other parameters.
            MalformedUpdateError: Truncated or trailing bytes, bad magic, version, quantization,
                chunk count or length, or a chunk that is not a ciphertext of this study.
        """
        require_within(data, max_bytes=max_bytes)
        update = _parse(data, context=context)
        if expected_length is not None and update.length != expected_length:
            raise MalformedUpdateError(
                f"update carries {update.length} values but the model has {expected_length}: it "
                "was made for another model architecture"
            )
        if check_ciphertexts:
            for _ in _load_chunks(context, update, name="the update"):
                pass
        return update


def encrypt_packed(
    context: SecretContext,
    *,
    values: npt.NDArray[np.floating[Any]],
    weight: float,
    quantization: Quantization,
) -> PackedUpdate:
    """Quantize ``values``, weight them by ``weight`` in (0, 1] and encrypt them, packed.

    Raises:
        TypeError: ``context`` holds no secret key, or ``values`` is not a numeric array.
        ValueError: ``values`` is not a finite, non-empty 1-D vector, or ``weight`` is not in
            (0, 1], or too small to be represented in ``value_bits`` bits.
        ValueRangeError: Some value lies outside ``[-clip, clip]``.
        ParameterError: The context does not use :data:`PACKED_PARAMS`.
    """
    if not isinstance(context, SecretContext):
        raise TypeError("encrypting needs the hospital's SecretContext")
    _require_packed_params(context)
    vector = model_vector(values)  # a fresh copy, which _slot_values may overwrite
    weight_units = _weight_units(weight, quantization)
    plain = _slot_values(vector, weight_units=weight_units, scheme=quantization)
    slot_count = context.params.slot_count
    chunks = _backend.encrypt_seeded(
        context.tenseal_context,
        (plain[start : start + slot_count] for start in range(0, plain.size, slot_count)),
    )
    return PackedUpdate(
        fingerprint=context.fingerprint,
        length=vector.size,
        quantization=quantization,
        chunks=chunks,
    )


class PackedSum:
    """A sum of packed updates that grows one update at a time; needs no key.

    The aggregator adds each hospital's update as its reply arrives, so only the last one's
    loading and adding wait for the slowest hospital. :meth:`add` loads and checks every chunk of
    an update before it touches the sum: an update that fails is refused whole, and the sum holds
    exactly the updates added before it.
    """

    def __init__(self, context: AggregatorContext | SecretContext) -> None:
        """An empty sum under a :data:`PACKED_PARAMS` study's context (raises ParameterError)."""
        _require_packed_params(context)
        self._context = context
        self._first: PackedUpdate | None = None
        self._totals: list[Any] = []
        self.count = 0

    def add(self, update: PackedUpdate) -> None:
        """Add ``update`` to the sum.

        Raises:
            ValueError: The sum already holds as many updates as the quantization's headroom
                allows (another would carry into neighbouring values).
            ContextMismatchError, MalformedUpdateError: The update belongs to another study, has
                another length or quantization than the first, or holds a chunk that is not a
                ciphertext of ours.
        """
        first = self._first or update
        name = f"update {self.count}"
        if (update.length, update.quantization) != (first.length, first.quantization):
            raise MalformedUpdateError(
                f"{name} ({update.length} values, {update.quantization}) does not match "
                f"update 0 ({first.length} values, {first.quantization})"
            )
        _require_room_for(self.count + 1, first.quantization)
        loaded = list(_load_chunks(self._context, update, name=name))
        if self._first is None:
            self._first, self._totals = update, loaded
        else:
            for total, other in zip(self._totals, loaded, strict=True):
                _backend.add_seal_into(self._context.tenseal_context, total, other)
        self.count += 1

    def total(self) -> PackedUpdate:
        """The sum so far, as an update (full-size ciphertexts: a sum is no longer seeded).

        Raises:
            ValueError: No update was added yet.
        """
        if self._first is None:
            raise ValueError("the sum holds no update yet")
        return PackedUpdate(
            fingerprint=self._first.fingerprint,
            length=self._first.length,
            quantization=self._first.quantization,
            chunks=tuple(_backend.serialize_seal_chunk(total) for total in self._totals),
        )


def sum_packed_updates(
    context: AggregatorContext | SecretContext, updates: Sequence[PackedUpdate]
) -> PackedUpdate:
    """Add updates slot by slot; needs no key.

    Raises:
        ValueError: No updates, or more than the quantization's headroom allows (a carry would
            corrupt neighbouring values).
        ContextMismatchError, MalformedUpdateError: An update belongs to another study, has
            another length or quantization, or holds a chunk that is not a ciphertext of ours.
    """
    if not updates:
        raise ValueError("sum_packed_updates needs at least one update")
    _require_room_for(len(updates), updates[0].quantization)
    running = PackedSum(context)
    for update in updates:
        running.add(update)
    return running.total()


def decrypt_packed_mean(context: SecretContext, update: PackedUpdate) -> DecryptedMean:
    """Decrypt a (summed) packed update into the weighted mean of its values.

    Raises:
        ContextMismatchError: The update belongs to another study.
        MalformedUpdateError: A chunk is not a ciphertext of this study.
        DecryptionError: A word is not an integer within :data:`NOISE_MARGIN`, or holds more
            than two fields, or the weight's slot is not a positive integer: not a sum of this
            study's packed updates.
    """
    if not isinstance(context, SecretContext):
        raise TypeError("decrypting needs the hospital's SecretContext; the aggregator has no key")
    scheme = update.quantization
    sizes = _slot_sizes(update.length, slot_count=context.params.slot_count)
    decrypted = _backend.decrypt_seal_chunks(
        context.tenseal_context, _load_chunks(context, update, name="the update"), sizes=sizes
    )
    # A complex array viewed as float64 interleaves each slot's real and imaginary word.
    words = _integers(decrypted.view(np.float64))
    total_units, spare = int(words[-2]), int(words[-1])
    if total_units <= 0 or spare != 0:
        raise DecryptionError(
            f"the decrypted weight slot is {total_units} + {spare}i, not a positive integer: "
            "this is not a sum of this study's packed updates"
        )
    mean = _unpack(words[:-2], scheme)[: update.length]
    mean *= scheme.levels / total_units
    mean *= scheme.step
    mean -= scheme.clip
    return DecryptedMean(mean=mean, total_weight=total_units / scheme.levels)


def max_packed_nbytes(length: int) -> int:
    """An upper bound on the wire size of a packed update (fresh or summed) of ``length`` values."""
    chunk_count = len(_slot_sizes(length, slot_count=PACKED_PARAMS.slot_count))
    return max_framed_nbytes(_HEADER.size, chunk_count=chunk_count, params=PACKED_PARAMS)


def _require_room_for(summands: int, scheme: Quantization) -> None:
    if summands > scheme.max_summands:
        raise ValueError(
            f"cannot sum {summands} packed updates: {scheme.headroom_bits} headroom bits leave "
            f"room for {scheme.max_summands}"
        )


def _require_packed_params(context: SecretContext | AggregatorContext) -> None:
    if context.params != PACKED_PARAMS:
        raise ParameterError(
            f"packed updates need a study context with {PACKED_PARAMS}, this one has "
            f"{context.params}"
        )


def _weight_units(weight: float, scheme: Quantization) -> int:
    if isinstance(weight, bool) or not isinstance(weight, int | float | np.integer | np.floating):
        raise TypeError(f"weight must be a real number, got {weight!r}")
    if not 0 < weight <= 1:
        raise ValueError(f"a packed update's weight must be in (0, 1], got {weight!r}")
    units = round(float(weight) * scheme.levels)
    if units < 1:
        raise ValueError(
            f"weight {weight!r} is below the smallest representable share, 1/{scheme.levels}"
        )
    return units


def _slot_values(
    vector: npt.NDArray[np.float64], *, weight_units: int, scheme: Quantization
) -> npt.NDArray[np.complex128]:
    """The slots of ``vector`` weighted by ``weight_units``, then the weight's slot.

    Follows the module docstring's encoding, in place on ``vector`` and in float64, where every
    field and word is an exact integer: 11 ms per million values here, against 16 ms for the
    same encoding in int64 temporaries.
    """
    _require_within_clip(vector, scheme)
    vector += scheme.clip
    vector /= scheme.step
    np.rint(vector, out=vector)  # q
    vector *= weight_units / scheme.levels
    np.rint(vector, out=vector)  # c
    fields = np.zeros(-(-vector.size // _VALUES_PER_SLOT) * _VALUES_PER_SLOT)
    fields[: vector.size] = vector
    # One row per slot: (real, imaginary) words of (high, low) fields each.
    quads = fields.reshape(-1, 2, 2)
    slots = np.empty(len(quads) + 1, dtype=np.complex128)
    words = slots.view(np.float64).reshape(-1, 2)
    np.multiply(quads[:, :, 0], float(1 << scheme.field_bits), out=words[:-1])
    words[:-1] += quads[:, :, 1]
    words[-1] = (weight_units, 0)
    return slots


def _require_within_clip(vector: npt.NDArray[np.float64], scheme: Quantization) -> None:
    if max(vector.max(), -vector.min()) <= scheme.clip:
        return
    index = int(np.argmax(np.abs(vector)))
    raise ValueRangeError(
        f"values[{index}] = {vector[index]} lies outside the quantization range "
        f"[-{scheme.clip}, {scheme.clip}]: the study's protocol must allow a wider clip"
    )


def _unpack(words: npt.NDArray[np.float64], scheme: Quantization) -> npt.NDArray[np.float64]:
    """Each word's (high, low) fields, in order; refuses a word wider than two fields.

    Words are non-negative integers below 2**53, so float64 splits them exactly (with the rest
    of decoding in place, 2.5 ms per million values against 15 ms through int64).
    """
    field_size = float(1 << scheme.field_bits)
    if words.max() >= field_size * field_size:
        raise DecryptionError(
            "a decrypted word holds more than two fields: this is not a sum of this study's "
            "packed updates"
        )
    fields = np.empty((words.size, 2))
    high, low = fields[:, 0], fields[:, 1]
    np.floor(np.divide(words, field_size, out=high), out=high)
    np.subtract(words, high * field_size, out=low)
    return fields.reshape(-1)


def _integers(decrypted: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """``decrypted`` rounded to the non-negative integers it must lie within NOISE_MARGIN of."""
    rounded = np.rint(decrypted)
    distance = np.subtract(decrypted, rounded)
    np.abs(distance, out=distance)
    if distance.max() > NOISE_MARGIN or rounded.min() < 0:
        worst = int(np.argmax(np.where(rounded < 0, np.inf, distance)))
        raise DecryptionError(
            f"word {worst} decrypted to {decrypted[worst]}, not a non-negative integer within "
            f"{NOISE_MARGIN}: the noise is too large, or this is not a sum of packed updates"
        )
    return rounded


def _slot_sizes(length: int, *, slot_count: int) -> list[int]:
    slots = -(-length // _VALUES_PER_SLOT) + 1  # the values, and the weight's slot
    return [min(slot_count, slots - start) for start in range(0, slots, slot_count)]


def _parse(data: bytes, *, context: SecretContext | AggregatorContext) -> PackedUpdate:
    if len(data) < _HEADER.size:
        raise MalformedUpdateError(
            f"update is truncated: {len(data)} bytes, the header alone has {_HEADER.size}"
        )
    magic, version, digest, length, clip, value_bits, headroom_bits, chunk_count = (
        _HEADER.unpack_from(data)
    )
    if magic != _MAGIC:
        raise MalformedUpdateError(
            f"not a Cohort packed update: starts with {magic!r}, expected {_MAGIC!r}"
        )
    if version != _VERSION:
        raise MalformedUpdateError(
            f"packed update format version {version} is not supported (this library reads "
            f"version {_VERSION})"
        )
    require_fingerprint(digest.hex(), context=context, name="update")
    try:
        scheme = Quantization(clip=clip, value_bits=value_bits, headroom_bits=headroom_bits)
    except ParameterError as error:
        raise MalformedUpdateError(f"update declares an invalid quantization: {error}") from error
    if not 1 <= length <= MAX_LENGTH:
        raise MalformedUpdateError("update carries no values")
    expected_count = len(_slot_sizes(length, slot_count=context.params.slot_count))
    if chunk_count != expected_count:
        raise MalformedUpdateError(
            f"update declares {chunk_count} chunks; {length} packed values and a weight need "
            f"{expected_count}"
        )
    chunks = read_chunks(data, offset=_HEADER.size, chunk_count=chunk_count)
    return PackedUpdate(fingerprint=digest.hex(), length=length, quantization=scheme, chunks=chunks)


def _load_chunks(
    context: SecretContext | AggregatorContext, update: PackedUpdate, *, name: str
) -> Iterator[Any]:
    """Check ``update`` against ``context`` now; load and validate its chunks lazily."""
    _require_packed_params(context)
    require_fingerprint(update.fingerprint, context=context, name=name)
    expected = len(_slot_sizes(update.length, slot_count=context.params.slot_count))
    if len(update.chunks) != expected:
        raise MalformedUpdateError(
            f"{name} has {len(update.chunks)} chunks; {update.length} packed values and a weight "
            f"need {expected}"
        )
    return (
        _backend.load_seal_chunk(context.tenseal_context, chunk, name=f"chunk {i} of {name}")
        for i, chunk in enumerate(update.chunks)
    )
