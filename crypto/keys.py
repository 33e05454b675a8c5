"""A study's two CKKS contexts: the hospitals' secret one and the aggregator's keyless one.

Hospitals share one :class:`SecretContext` per study (generated once, distributed out of band);
it encrypts and decrypts with a symmetric secret key. The aggregator gets
:meth:`SecretContext.aggregator_context`: the parameters and nothing else, no key of any kind,
which is all that adding ciphertexts needs. Both sides report the same :attr:`fingerprint`.

A TenSEAL context without keys serializes to the same bytes for every study with the same
parameters, so it cannot tell two studies apart. Each study therefore gets a random 128-bit id,
kept next to the TenSEAL context in the serialized form (magic ``b"COHC"``, a format version, the
id, then TenSEAL's bytes), and the fingerprint is a SHA-256 of that id and the parameters. It
identifies a study; it does not authenticate a sender.

>>> secret = SecretContext.generate()
>>> aggregator = AggregatorContext.from_bytes(secret.aggregator_context().to_bytes())
>>> aggregator.fingerprint == secret.fingerprint, aggregator.has_secret_key
(True, False)
>>> AggregatorContext.from_bytes(secret.to_bytes())  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
crypto.errors.KeyLeakError: this context carries a secret key; ...
"""

from __future__ import annotations

import hashlib
import json
import secrets
import struct
from typing import Any, ClassVar

from crypto import _backend
from crypto.errors import KeyLeakError, MalformedContextError, MissingSecretKeyError, OversizeError
from crypto.params import CkksParams

_MAGIC = b"COHC"
_VERSION = 1
_STUDY_ID_BYTES = 16
_HEADER = struct.Struct(f">4sB{_STUDY_ID_BYTES}s")
_FINGERPRINT_DOMAIN = b"cohort/crypto/ckks-study-context/v1\x00"
_DEFAULT_PARAMS = CkksParams()


class _StudyContext:
    """What both sides of a study share: parameters, study id and a TenSEAL context."""

    _WITH_SECRET_KEY: ClassVar[bool]

    def __init__(self, tenseal_context: Any, *, study_id: bytes) -> None:
        if len(study_id) != _STUDY_ID_BYTES:
            raise MalformedContextError(
                f"a study id has {_STUDY_ID_BYTES} bytes, got {len(study_id)}"
            )
        self._tenseal = tenseal_context
        self._study_id = study_id
        self._params = _backend.context_params(tenseal_context)
        self._fingerprint = _fingerprint(study_id, self._params)

    @property
    def params(self) -> CkksParams:
        """The CKKS parameters of the study, as SEAL actually uses them."""
        return self._params

    @property
    def fingerprint(self) -> str:
        """SHA-256 (hex) of the study id and parameters; equal on both sides of a study."""
        return self._fingerprint

    @property
    def has_secret_key(self) -> bool:
        """Whether this context can decrypt, as reported by TenSEAL itself."""
        return _backend.has_secret_key(self._tenseal)

    @property
    def tenseal_context(self) -> Any:
        """The underlying ``tenseal.Context``; use :meth:`to_bytes` rather than serializing it."""
        return self._tenseal

    def to_bytes(self) -> bytes:
        """The serialized context (with the secret key only for a :class:`SecretContext`)."""
        header = _HEADER.pack(_MAGIC, _VERSION, self._study_id)
        return header + _backend.serialize_context(
            self._tenseal, with_secret_key=self._WITH_SECRET_KEY
        )

    def __repr__(self) -> str:
        """Names the study without showing any key material."""
        return f"{type(self).__name__}(fingerprint={self._fingerprint[:16]}..., {self._params})"


class SecretContext(_StudyContext):
    """A hospital's context: the study's parameters and its symmetric secret key.

    Build one with :meth:`generate` or :meth:`from_bytes`. Whoever holds it can decrypt every
    update of the study: store it like a private key and never send it to the aggregator.
    """

    _WITH_SECRET_KEY = True

    def __init__(self, tenseal_context: Any, *, study_id: bytes) -> None:
        """Wrap a TenSEAL context that holds the secret key (raises MissingSecretKeyError)."""
        super().__init__(tenseal_context, study_id=study_id)
        if not self.has_secret_key:
            raise MissingSecretKeyError(
                "this context has no secret key, so it cannot encrypt or decrypt: load the "
                "hospital's key file (SecretContext.to_bytes), not an aggregator context"
            )

    @classmethod
    def generate(cls, *, params: CkksParams = _DEFAULT_PARAMS) -> SecretContext:
        """A new study: fresh secret key and study id.

        Encryption is symmetric (secret-key) CKKS: faster than public-key encryption, and
        hospitals that share the study key have no use for a public key.

        >>> SecretContext.generate().params.slot_count
        4096
        """
        return cls(_backend.new_context(params), study_id=secrets.token_bytes(_STUDY_ID_BYTES))

    @classmethod
    def from_bytes(cls, data: bytes) -> SecretContext:
        """Load what :meth:`to_bytes` wrote.

        Raises:
            MissingSecretKeyError: The bytes hold no secret key (an aggregator context).
            MalformedContextError: The bytes are not a serialized context.
        """
        study_id, tenseal_context = _parse(data)
        return cls(tenseal_context, study_id=study_id)

    def aggregator_context(self) -> AggregatorContext:
        """The study's context for the aggregator: parameters only, no key of any kind.

        >>> secret = SecretContext.generate()
        >>> aggregator = secret.aggregator_context()
        >>> aggregator.has_secret_key, len(aggregator.to_bytes()) < 200
        (False, True)
        """
        keyless = _backend.serialize_context(self._tenseal, with_secret_key=False)
        return AggregatorContext(_backend.load_context(keyless), study_id=self._study_id)


class AggregatorContext(_StudyContext):
    """The aggregator's context: a study's parameters without any key.

    It can add ciphertexts (:func:`crypto.sum_updates`) and nothing more: it cannot decrypt,
    encrypt, relinearize or rotate. Its serialized form is about a hundred bytes.
    """

    _WITH_SECRET_KEY = False

    def __init__(self, tenseal_context: Any, *, study_id: bytes) -> None:
        """Wrap a TenSEAL context that holds no key (raises KeyLeakError otherwise)."""
        super().__init__(tenseal_context, study_id=study_id)
        keys = _backend.held_keys(tenseal_context)
        if keys:
            advice = (
                "never give the aggregator a hospital's key file; send it "
                "SecretContext.aggregator_context().to_bytes() instead"
            )
            if "secret key" in keys:
                raise KeyLeakError(f"this context carries a secret key; {advice}")
            raise KeyLeakError(f"the aggregator's context must hold no key, got {keys}; {advice}")

    @classmethod
    def from_bytes(cls, data: bytes, *, max_bytes: int = 1 << 20) -> AggregatorContext:
        """Load what :meth:`to_bytes` wrote, refusing any context that carries a key.

        Raises:
            OversizeError: ``data`` is longer than ``max_bytes``.
            KeyLeakError: The context holds a secret, public, relinearization or Galois key.
            MalformedContextError: The bytes are not a serialized context.
        """
        if len(data) > max_bytes:
            raise OversizeError(
                f"aggregator context of {len(data)} bytes exceeds the {max_bytes}-byte limit "
                "(a keyless context is ~100 bytes: was a key file sent?)"
            )
        study_id, tenseal_context = _parse(data)
        return cls(tenseal_context, study_id=study_id)


def _parse(data: bytes) -> tuple[bytes, Any]:
    if not isinstance(data, bytes):
        raise TypeError(f"context bytes must be bytes, got {type(data).__name__}")
    if len(data) <= _HEADER.size:
        raise MalformedContextError(
            f"context bytes are truncated: {len(data)} bytes, the header alone has {_HEADER.size}"
        )
    magic, version, study_id = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise MalformedContextError(
            f"not a Cohort CKKS context: starts with {magic!r}, expected {_MAGIC!r}"
        )
    if version != _VERSION:
        raise MalformedContextError(
            f"context format version {version} is not supported (this library reads version "
            f"{_VERSION}): upgrade the crypto package or re-export the context"
        )
    return study_id, _backend.load_context(data[_HEADER.size :])


def _fingerprint(study_id: bytes, params: CkksParams) -> str:
    canonical = json.dumps(params.to_dict(), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(_FINGERPRINT_DOMAIN + study_id + canonical).hexdigest()
