"""CkksParams: validation, 128-bit security bounds (checked against SEAL), dict round trip."""

from __future__ import annotations

import pytest
import tenseal as ts
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto import MAX_MODULUS_BITS_128, CkksParams, ParameterError, SecretContext


def test_defaults_are_secure_and_documented() -> None:
    params = CkksParams()

    assert params.poly_modulus_degree == 8192
    assert params.coeff_mod_bit_sizes == (60, 40, 60)
    assert params.scale_bits == 50
    assert sum(params.coeff_mod_bit_sizes) <= MAX_MODULUS_BITS_128[8192]
    assert params.slot_count == 4096
    assert params.data_modulus_bits == 100
    assert params.max_abs_value == 2.0**37


def test_max_abs_value_leaves_room_for_realistic_weighted_values() -> None:
    # |x| = 100 at 1e5 samples, summed over the most updates sum_updates accepts.
    assert 100 * 100_000 < CkksParams().max_abs_value / 1000


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"poly_modulus_degree": 4096, "coeff_mod_bit_sizes": (60, 60, 60)}, "128-bit security"),
        ({"poly_modulus_degree": 8192, "coeff_mod_bit_sizes": (60,) * 4}, "128-bit security"),
        ({"poly_modulus_degree": 5000}, "not supported"),
        ({"poly_modulus_degree": 2048, "coeff_mod_bit_sizes": (27, 27)}, "not supported"),
        ({"poly_modulus_degree": True}, "must be an integer"),
        ({"scale_bits": 90}, "out of range"),
        ({"scale_bits": 10}, "out of range"),
        ({"scale_bits": 40.0}, "must be an integer"),
        ({"coeff_mod_bit_sizes": (30, 30, 60), "scale_bits": 50}, "too large"),
        ({"coeff_mod_bit_sizes": (60, 60), "scale_bits": 50}, "too large"),
        ({"coeff_mod_bit_sizes": (60,)}, "at least two primes"),
        ({"coeff_mod_bit_sizes": (61, 40, 60)}, "61-bit prime"),
        ({"coeff_mod_bit_sizes": (60, 10, 60)}, "10-bit prime"),
        ({"coeff_mod_bit_sizes": [60, 40, 60]}, "tuple"),
    ],
)
def test_bad_params_raise_parameter_error(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        CkksParams(**kwargs)  # type: ignore[arg-type]


def test_parameter_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not supported"):
        CkksParams(poly_modulus_degree=1000)


@pytest.mark.parametrize("degree", [4096, 8192])
def test_security_table_matches_seal(degree: int) -> None:
    budget = MAX_MODULUS_BITS_128[degree]
    at_limit = _split_bits(budget)
    assert SecretContext.generate(
        params=CkksParams(poly_modulus_degree=degree, coeff_mod_bit_sizes=at_limit, scale_bits=20)
    ).has_secret_key
    # SEAL's own 128-bit check refuses one more bit, so the table is neither looser nor stricter.
    with pytest.raises(ValueError, match="not set correctly"):
        ts.context(
            ts.SCHEME_TYPE.CKKS,
            poly_modulus_degree=degree,
            coeff_mod_bit_sizes=list(_split_bits(budget + 1)),
            encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
        )


def _split_bits(total: int) -> tuple[int, ...]:
    primes = [60] * (total // 60)
    if total % 60:
        primes.append(total % 60)
    if primes[-1] < 20:
        primes[-2:] = [primes[-2] - 20 + primes[-1], 20]
    return tuple(primes)


def test_to_dict_is_json_ready() -> None:
    assert CkksParams().to_dict() == {
        "poly_modulus_degree": 8192,
        "coeff_mod_bit_sizes": [60, 40, 60],
        "scale_bits": 50,
    }


@settings(max_examples=30, deadline=None)
@given(
    degree=st.sampled_from(sorted(MAX_MODULUS_BITS_128)),
    primes=st.lists(st.integers(20, 60), min_size=2, max_size=14),
    scale_bits=st.integers(20, 60),
)
def test_dict_round_trip_or_parameter_error(
    degree: int, primes: list[int], scale_bits: int
) -> None:
    data = {"poly_modulus_degree": degree, "coeff_mod_bit_sizes": primes, "scale_bits": scale_bits}
    try:
        params = CkksParams.from_dict(data)
    except ParameterError:
        data_bits = sum(primes[:-1])
        assert sum(primes) > MAX_MODULUS_BITS_128[degree] or data_bits - scale_bits < 13
        return
    assert CkksParams.from_dict(params.to_dict()) == params
    assert params.max_abs_value >= 1.0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([8192, [60, 40, 60], 50], "must be a mapping"),
        ({"poly_modulus_degree": 8192, "coeff_mod_bit_sizes": [60, 40, 60]}, "exactly the keys"),
        ({**CkksParams().to_dict(), "extra": 1}, "exactly the keys"),
        ({**CkksParams().to_dict(), "coeff_mod_bit_sizes": "60,40,60"}, "list of integers"),
        ({**CkksParams().to_dict(), "coeff_mod_bit_sizes": [60, 40.5, 60]}, "must be an integer"),
        ({**CkksParams().to_dict(), "scale_bits": "50"}, "must be an integer"),
        ({**CkksParams().to_dict(), "poly_modulus_degree": 4096}, "128-bit security"),
    ],
)
def test_from_dict_refuses_bad_input(data: object, message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        CkksParams.from_dict(data)  # type: ignore[arg-type]
