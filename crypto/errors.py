"""The errors of the ``crypto`` package: one hierarchy, rooted at :class:`CryptoError`.

Every failure this package reports, including TenSEAL's and SEAL's own, reaches callers as one of
these classes, so ``except CryptoError`` is enough to keep a round alive when a hospital sends
garbage. Messages say what was wrong and what to do about it.

>>> from crypto import CkksParams, ParameterError
>>> try:
...     CkksParams(poly_modulus_degree=5000)
... except ParameterError as error:
...     print(type(error).__name__, isinstance(error, ValueError))
ParameterError True
"""

from __future__ import annotations


class CryptoError(Exception):
    """Base class of every error raised by the ``crypto`` package."""


class ParameterError(CryptoError, ValueError):
    """CKKS parameters that are insecure, unsupported, or leave no room for values."""


class KeyLeakError(CryptoError):
    """A context meant for the aggregator carries a key; the aggregator must hold none."""


class MissingSecretKeyError(CryptoError):
    """A hospital-side context was loaded from bytes that do not contain the secret key."""


class MalformedContextError(CryptoError):
    """Bytes that are not a serialized Cohort CKKS context (truncated, garbage, bad header)."""


class MalformedUpdateError(CryptoError):
    """An encrypted update whose bytes or ciphertexts are not what this study produces."""


class ContextMismatchError(CryptoError):
    """An update made under another study's context (a different fingerprint)."""


class OversizeError(CryptoError):
    """Input bytes over the caller's limit, or a vector too long for the wire format."""


class ValueRangeError(CryptoError, ValueError):
    """A plaintext too large to encode: it would wrap around the CKKS modulus, not saturate."""


class DecryptionError(CryptoError):
    """A decrypted update that cannot be a sum of this study's updates (total weight <= 0)."""
