"""The only module that calls TenSEAL: typed wrappers that turn its failures into CryptoErrors.

TenSEAL ships no type information and reports SEAL and protobuf failures as whatever builtin
exception pybind11 maps a C++ exception to (ValueError, RuntimeError, IndexError, MemoryError, ...),
so every call into it goes through :func:`_translated`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import numpy.typing as npt
import tenseal as ts

# Importing sealapi also registers SEAL's Modulus type with pybind11; without it,
# EncryptionParameters.coeff_modulus() cannot be converted to Python objects.
import tenseal.sealapi as sealapi

from crypto.errors import CryptoError, MalformedContextError, MalformedUpdateError, ParameterError
from crypto.params import CkksParams

TsContext = Any
TsVector = Any


@contextmanager
def _translated(error: type[CryptoError], message: str) -> Iterator[None]:
    try:
        yield
    except CryptoError:
        raise
    except Exception as exc:  # pybind11 maps C++ failures onto many builtin types
        raise error(f"{message}: {exc}") from exc


def new_context(params: CkksParams) -> TsContext:
    """A fresh symmetric-key CKKS context (secret key only; TenSEAL adds relinearization keys)."""
    with _translated(ParameterError, f"SEAL refused {params}"):
        context = ts.context(
            ts.SCHEME_TYPE.CKKS,
            poly_modulus_degree=params.poly_modulus_degree,
            coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
            encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
        )
        context.global_scale = 2.0**params.scale_bits
    return context


def load_context(data: bytes) -> TsContext:
    """A TenSEAL context from its serialized form."""
    with _translated(MalformedContextError, "not a serialized TenSEAL context"):
        return ts.context_from(data)


def serialize_context(context: TsContext, *, with_secret_key: bool) -> bytes:
    """The context's parameters, plus its secret key when asked; never any other key."""
    with _translated(MalformedContextError, "TenSEAL could not serialize the context"):
        return bytes(
            context.serialize(
                save_public_key=False,
                save_secret_key=with_secret_key,
                save_galois_keys=False,
                save_relin_keys=False,
            )
        )


def context_params(context: TsContext) -> CkksParams:
    """The CKKS parameters a context really uses, read back from SEAL."""
    with _translated(MalformedContextError, "cannot read the context's parameters"):
        seal_context = context.seal_context().data
        parms = seal_context.key_context_data().parms()
        if parms.scheme() != ts.SCHEME_TYPE.CKKS.value or not seal_context.parameters_set():
            raise MalformedContextError(
                f"the context is not a valid CKKS context ({seal_context.parameters_error_name()})"
            )
        mantissa, exponent = math.frexp(float(context.global_scale))
        degree = int(parms.poly_modulus_degree())
        bit_sizes = tuple(int(prime.bit_count()) for prime in parms.coeff_modulus())
    if mantissa != 0.5:
        raise MalformedContextError(f"the context's scale {mantissa * 2**exponent} is not 2**k")
    return CkksParams(
        poly_modulus_degree=degree, coeff_mod_bit_sizes=bit_sizes, scale_bits=exponent - 1
    )


def held_keys(context: TsContext) -> tuple[str, ...]:
    """Names of the keys a context holds, as TenSEAL reports them."""
    with _translated(MalformedContextError, "cannot inspect the context's keys"):
        held = {
            "secret key": has_secret_key(context),
            "public key": _has_public_key(context),
            "relinearization keys": bool(context.has_relin_keys()),
            "Galois keys": bool(context.has_galois_keys()),
        }
    return tuple(name for name, present in held.items() if present)


def has_secret_key(context: TsContext) -> bool:
    """Whether TenSEAL says the context can decrypt."""
    return bool(context.has_secret_key()) or bool(context.is_private())


def _has_public_key(context: TsContext) -> bool:
    try:
        return bool(context.has_public_key())
    except ValueError:
        # TenSEAL raises, rather than answering False, for symmetric contexts: they have none.
        return False


def encrypt_chunk(context: TsContext, values: npt.NDArray[np.float64]) -> bytes:
    """Serialized ciphertext of at most ``slot_count`` values."""
    with _translated(CryptoError, "TenSEAL could not encrypt the values"):
        return bytes(ts.ckks_vector(context, values.tolist()).serialize())


def load_chunk(context: TsContext, data: bytes, *, size: int, name: str) -> TsVector:
    """A ciphertext vector of ``size`` values, checked to be a fresh-or-summed chunk of ours.

    Sums keep the scale, level and ciphertext size of fresh encryptions; anything else (other
    scale, mod-switched, multiplied) was not produced by this package, and TenSEAL would
    otherwise mis-decrypt it or fail later with an error that names no chunk.
    """
    with _translated(MalformedUpdateError, f"{name} is not a CKKS ciphertext of this context"):
        vector = ts.ckks_vector_from(context, data)
        ciphertexts = vector.ciphertext()
        if len(ciphertexts) != 1 or int(vector.size()) != size:
            raise MalformedUpdateError(
                f"{name} holds {len(ciphertexts)} ciphertext(s) of {vector.size()} values; "
                f"expected one of {size}"
            )
        ciphertext = ciphertexts[0]
        expected_scale = float(context.global_scale)
        top_level = context.seal_context().data.first_parms_id()
        if (
            ciphertext.size() != 2
            or ciphertext.scale != expected_scale
            or ciphertext.parms_id() != top_level
        ):
            raise MalformedUpdateError(
                f"{name} has scale {ciphertext.scale} and {ciphertext.size()} polynomials; this "
                f"study's updates have scale {expected_scale}, 2 polynomials, top modulus level"
            )
    return vector


def add_into(total: TsVector, other: TsVector, *, name: str) -> None:
    """Add ``other`` into ``total`` in place (needs no key)."""
    with _translated(MalformedUpdateError, f"cannot add {name}"):
        total.add_(other)


def serialize_vector(vector: TsVector) -> bytes:
    """A ciphertext vector's wire bytes."""
    with _translated(MalformedUpdateError, "TenSEAL could not serialize a ciphertext"):
        return bytes(vector.serialize())


def decrypt_vector(vector: TsVector, *, size: int, name: str) -> npt.NDArray[np.float64]:
    """Plaintext of a chunk loaded under a context that holds the secret key."""
    with _translated(MalformedUpdateError, f"cannot decrypt {name}"):
        plain = np.asarray(vector.decrypt(), dtype=np.float64)
    if plain.shape != (size,):
        raise MalformedUpdateError(f"{name} decrypted to {plain.size} values, expected {size}")
    return plain


# Packed updates (crypto.packing) go through SEAL's own API, which TenSEAL exposes as
# tenseal.sealapi: only SEAL can serialize a symmetric ciphertext *seeded* (its random half
# replaced by the PRNG seed that regenerates it), which halves the bytes a hospital sends.
# SEAL reads and writes ciphertexts through file paths only; an in-memory file stands in.
SealCiphertext = Any


@contextmanager
def _scratch_file(data: bytes = b"") -> Iterator[tuple[int, str]]:
    """An in-memory file holding ``data``: its descriptor and a path SEAL can open."""
    fd = os.memfd_create("cohort-ciphertext", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        yield fd, f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def _saved(serializable: Any) -> bytes:
    with _scratch_file() as (fd, path):
        serializable.save(path)
        return os.pread(fd, os.fstat(fd).st_size, 0)


def encrypt_seeded(
    context: TsContext, chunks: Iterable[npt.NDArray[np.complex128]]
) -> tuple[bytes, ...]:
    """Seeded serializations of the symmetric encryptions of each chunk of complex slot values.

    One encoder serves every chunk: building SEAL's CKKS encoder costs about half as much as
    encoding a chunk with it.
    """
    with _translated(CryptoError, "SEAL could not encrypt the values"):
        seal_context = context.seal_context().data
        encoder = sealapi.CKKSEncoder(seal_context)
        encryptor = sealapi.Encryptor(seal_context, context.secret_key().data)
        scale = float(context.global_scale)
        ciphertexts = []
        for values in chunks:
            plain = sealapi.Plaintext()
            encoder.encode(values.tolist(), scale, plain)
            ciphertexts.append(_saved(encryptor.encrypt_symmetric(plain)))
        return tuple(ciphertexts)


def load_seal_chunk(context: TsContext, data: bytes, *, name: str) -> SealCiphertext:
    """A ciphertext (seeded or full) checked to be a fresh-or-summed chunk of ``context``."""
    with _translated(MalformedUpdateError, f"{name} is not a CKKS ciphertext of this context"):
        seal_context = context.seal_context().data
        ciphertext = sealapi.Ciphertext(seal_context)
        with _scratch_file(data) as (_, path):
            ciphertext.load(seal_context, path)
        if not sealapi.is_valid_for(ciphertext, seal_context):
            raise MalformedUpdateError(f"{name} does not belong to this context's parameters")
        expected_scale = float(context.global_scale)
        if (
            ciphertext.size() != 2
            or ciphertext.scale != expected_scale
            or ciphertext.parms_id() != seal_context.first_parms_id()
            or not ciphertext.is_ntt_form()
        ):
            raise MalformedUpdateError(
                f"{name} has scale {ciphertext.scale} and {ciphertext.size()} polynomials; this "
                f"study's updates have scale {expected_scale}, 2 polynomials, top modulus level"
            )
    return ciphertext


def add_seal_into(context: TsContext, total: SealCiphertext, other: SealCiphertext) -> None:
    """Add ``other`` into ``total`` in place (needs no key)."""
    with _translated(MalformedUpdateError, "SEAL could not add the ciphertexts"):
        sealapi.Evaluator(context.seal_context().data).add_inplace(total, other)


def serialize_seal_chunk(ciphertext: SealCiphertext) -> bytes:
    """A (summed, hence full-size) ciphertext's wire bytes."""
    with _translated(MalformedUpdateError, "SEAL could not serialize a ciphertext"):
        return _saved(ciphertext)


def decrypt_seal_chunks(
    context: TsContext, ciphertexts: Iterable[SealCiphertext], *, sizes: Sequence[int]
) -> npt.NDArray[np.complex128]:
    """The first ``sizes[i]`` (complex) slots of each chunk, decrypted, end to end.

    Needs the context's secret key. One encoder decodes every chunk, as in :func:`encrypt_seeded`.
    """
    with _translated(CryptoError, "SEAL could not set up decryption"):
        seal_context = context.seal_context().data
        encoder = sealapi.CKKSEncoder(seal_context)
        decryptor = sealapi.Decryptor(seal_context, context.secret_key().data)
    slots = np.empty(sum(sizes), dtype=np.complex128)
    start = 0
    for index, (ciphertext, size) in enumerate(zip(ciphertexts, sizes, strict=True)):
        with _translated(MalformedUpdateError, f"cannot decrypt chunk {index}"):
            plain = sealapi.Plaintext()
            decryptor.decrypt(ciphertext, plain)
            slots[start : start + size] = encoder.decode_complex(plain)[:size]
        start += size
    return slots
