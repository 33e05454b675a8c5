"""CKKS parameters for add-only aggregation, validated for 128-bit security.

Aggregation here only ever adds ciphertexts: no multiplication, so no rescaling and no key
switching. Two consequences shape the defaults:

* Only the *data-level* modulus matters for the values: the product of every prime but the last
  (the last is SEAL's special prime, used for key switching only; ciphertexts never carry it).
  How that product splits into primes is irrelevant, so ``scale_bits`` may exceed a single prime.
* A ciphertext costs ``2 * N * (number of data primes)`` 64-bit words before compression, i.e.
  bandwidth grows with the data-level modulus, not with ``N``.

The defaults, ``N = 8192``, primes ``(60, 40, 60)`` and ``scale_bits = 50``, give 100 data bits:

* precision: encryption noise adds an absolute error of about ``2**-50 * 2**10`` (~1e-12) to
  each summed value, so a weighted mean over total weight ``W`` is off by about
  ``1e-12 * (1 + |mean|) / W`` (measured worst case, two updates at weight 1 with
  ``|x| = 100``: 1e-11, against the 1e-6 required). Encoding goes through float64, which adds
  ~1e-15 relative to the largest ``|x * weight|`` in the same ciphertext;
* range: :attr:`CkksParams.max_abs_value` is ``2**37`` (~1.4e11) per update, even when
  ``MAX_SUMMANDS`` updates are summed, so ``|x| = 100`` at weight ``1e5`` (1e7) fits ~10,000 times;
* security: 160 bits in all, under the 218 allowed at ``N = 8192`` for 128-bit security;
* cost: ~57 bytes per value, 14.4 times float32 (measured; zstd trims the 40-bit limb).

>>> params = CkksParams()
>>> params.slot_count, params.data_modulus_bits, params.max_abs_value == 2.0**37
(4096, 100, True)
>>> CkksParams.from_dict(params.to_dict()) == params
True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from crypto.errors import ParameterError

#: Largest total coefficient-modulus bits for 128-bit classical security (HomomorphicEncryption.org
#: standard, as enforced by SEAL's ``CoeffModulus::MaxBitCount(N, sec_level_type::tc128)``).
MAX_MODULUS_BITS_128: Mapping[int, int] = {4096: 109, 8192: 218, 16384: 438, 32768: 881}

#: Most updates :func:`crypto.sum_updates` adds at once; ``max_abs_value`` leaves room for them.
MAX_SUMMANDS = 1 << 10

_SUM_HEADROOM_BITS = 10
# SEAL picks each prime just under 2**bits, so the data modulus q only exceeds 2**(D - 1);
# decoding is centred (|value| < q / 2); one more bit absorbs noise and encoding round-off.
_SAFETY_BITS = 3
_PRIME_BITS = range(20, 61)
_SCALE_BITS = range(16, 61)
_FIELDS = ("poly_modulus_degree", "coeff_mod_bit_sizes", "scale_bits")


@dataclass(frozen=True)
class CkksParams:
    """CKKS parameters of a study; validated on construction, raising :class:`ParameterError`.

    Attributes:
        poly_modulus_degree: Ring dimension ``N``; one ciphertext holds ``N // 2`` values.
        coeff_mod_bit_sizes: Bit sizes of the coefficient-modulus primes. All but the last form
            the data-level modulus that holds values; the last is SEAL's special prime.
        scale_bits: Values are encoded as ``round(value * 2**scale_bits)``: more bits, finer
            precision, smaller :attr:`max_abs_value`.

    >>> CkksParams(poly_modulus_degree=4096, coeff_mod_bit_sizes=(60, 60, 60))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    crypto.errors.ParameterError: coeff_mod_bit_sizes (60, 60, 60) total 180 bits, over the 109 ...
    """

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 60)
    scale_bits: int = 50

    def __post_init__(self) -> None:
        """Refuse parameters that are insecure, unsupported by SEAL, or leave no value range."""
        self._check_degree()
        self._check_primes()
        self._check_scale()

    @property
    def slot_count(self) -> int:
        """Values held by one ciphertext: ``poly_modulus_degree // 2``."""
        return self.poly_modulus_degree // 2

    @property
    def data_modulus_bits(self) -> int:
        """Bits of the data-level modulus: every prime but the special (last) one."""
        return sum(self.coeff_mod_bit_sizes[:-1])

    @property
    def max_abs_value(self) -> float:
        """Largest ``|plaintext|`` one update may encode: ``2**(data bits - scale bits - 13)``.

        Ten of the 13 reserved bits let :data:`MAX_SUMMANDS` updates, each at this bound, add up
        without wrapping around the modulus; one covers SEAL's primes lying just under their
        nominal size, one the centred decoding (``|value| < q / 2``), one the encryption noise.
        CKKS has no overflow flag: a larger value would decrypt to garbage, so encrypting one is
        refused instead (:class:`crypto.ValueRangeError`).
        """
        return 2.0**self._value_bits

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready description, read back by :meth:`from_dict`."""
        return {
            "poly_modulus_degree": self.poly_modulus_degree,
            "coeff_mod_bit_sizes": list(self.coeff_mod_bit_sizes),
            "scale_bits": self.scale_bits,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> CkksParams:
        """Parameters from :meth:`to_dict`'s output, with every key required and type-checked.

        Raises:
            ParameterError: A key is missing or unknown, a value has the wrong type, or the
                parameters themselves are invalid.
        """
        if not isinstance(data, Mapping):
            raise ParameterError(f"CKKS parameters must be a mapping, got {type(data).__name__}")
        if set(data) != set(_FIELDS):
            raise ParameterError(
                f"CKKS parameters need exactly the keys {list(_FIELDS)}, got {sorted(data)}"
            )
        bit_sizes = data["coeff_mod_bit_sizes"]
        if not isinstance(bit_sizes, list | tuple):
            raise ParameterError(
                f"coeff_mod_bit_sizes must be a list of integers, got {type(bit_sizes).__name__}"
            )
        return cls(
            poly_modulus_degree=_int_field("poly_modulus_degree", data["poly_modulus_degree"]),
            coeff_mod_bit_sizes=tuple(_int_field("coeff_mod_bit_sizes", b) for b in bit_sizes),
            scale_bits=_int_field("scale_bits", data["scale_bits"]),
        )

    @property
    def _value_bits(self) -> int:
        return self.data_modulus_bits - self.scale_bits - _SUM_HEADROOM_BITS - _SAFETY_BITS

    def _check_degree(self) -> None:
        degree = _int_field("poly_modulus_degree", self.poly_modulus_degree)
        if degree not in MAX_MODULUS_BITS_128:
            raise ParameterError(
                f"poly_modulus_degree={degree} is not supported: use one of "
                f"{sorted(MAX_MODULUS_BITS_128)}"
            )

    def _check_primes(self) -> None:
        bit_sizes = self.coeff_mod_bit_sizes
        if not isinstance(bit_sizes, tuple):
            raise ParameterError(
                f"coeff_mod_bit_sizes must be a tuple of integers, got {type(bit_sizes).__name__}"
            )
        for bits in bit_sizes:
            if _int_field("coeff_mod_bit_sizes", bits) not in _PRIME_BITS:
                raise ParameterError(
                    f"coeff_mod_bit_sizes {bit_sizes} has a {bits}-bit prime: each prime must "
                    f"have {_PRIME_BITS.start} to {_PRIME_BITS.stop - 1} bits"
                )
        if len(bit_sizes) < 2:
            raise ParameterError(
                f"coeff_mod_bit_sizes {bit_sizes} needs at least two primes: TenSEAL always "
                "creates relinearization keys, which need the last (special) prime"
            )
        budget = MAX_MODULUS_BITS_128[self.poly_modulus_degree]
        if sum(bit_sizes) > budget:
            raise ParameterError(
                f"coeff_mod_bit_sizes {bit_sizes} total {sum(bit_sizes)} bits, over the {budget} "
                f"allowed for 128-bit security at poly_modulus_degree={self.poly_modulus_degree}: "
                "use fewer or smaller primes, or a larger poly_modulus_degree"
            )

    def _check_scale(self) -> None:
        scale_bits = _int_field("scale_bits", self.scale_bits)
        if scale_bits not in _SCALE_BITS:
            raise ParameterError(
                f"scale_bits={scale_bits} is out of range: use {_SCALE_BITS.start} (integer "
                f"slots of packed updates) to {_SCALE_BITS.stop - 1} (SEAL's largest prime)"
            )
        if self._value_bits < 0:
            needed = scale_bits + _SUM_HEADROOM_BITS + _SAFETY_BITS
            raise ParameterError(
                f"scale_bits={scale_bits} is too large for a {self.data_modulus_bits}-bit data "
                f"modulus (the primes before the last): it needs at least {needed} bits to hold "
                "values of magnitude 1; lower scale_bits or add data primes"
            )


def _int_field(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParameterError(f"{name} must be an integer, got {value!r}")
    return value
