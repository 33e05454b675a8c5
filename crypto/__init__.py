"""Homomorphic encryption for Cohort: hospitals encrypt, the aggregator adds, hospitals decrypt.

CKKS (TenSEAL 0.3.18) with symmetric encryption. Each study has one secret key shared by its
hospitals (:class:`SecretContext`); the aggregator holds an :class:`AggregatorContext` with no key
at all, which is enough to add ciphertexts and useless for anything else. Updates travel as
:class:`EncryptedUpdate` bytes and are validated completely before use.

Cost with the default :class:`CkksParams` (measured): ~57.4 bytes per model value, 14.4 times
float32; the aggregator's context is 118 bytes; a 100,000-value update encrypts in ~0.07 s and
decrypts in ~0.03 s on two cores. See :mod:`crypto.params` for the precision and range analysis.

>>> import numpy as np
>>> key = SecretContext.generate()
>>> aggregator = AggregatorContext.from_bytes(key.aggregator_context().to_bytes())
>>> updates = [
...     encrypt_update(key, values=np.array([0.5, -2.0, 10.0]), weight=120),
...     encrypt_update(key, values=np.array([1.5, 2.0, 30.0]), weight=40),
... ]
>>> wire = [update.to_bytes() for update in updates]
>>> received = [EncryptedUpdate.from_bytes(b, context=aggregator, max_bytes=1 << 20) for b in wire]
>>> total = sum_updates(aggregator, received)
>>> result = decrypt_mean(key, total)
>>> np.round(result.mean, 9).tolist(), round(result.total_weight, 9)
([0.75, -1.0, 15.0], 160.0)
"""

from crypto.errors import (
    ContextMismatchError,
    CryptoError,
    DecryptionError,
    KeyLeakError,
    MalformedContextError,
    MalformedUpdateError,
    MissingSecretKeyError,
    OversizeError,
    ParameterError,
    ValueRangeError,
)
from crypto.keys import AggregatorContext, SecretContext
from crypto.params import MAX_MODULUS_BITS_128, MAX_SUMMANDS, CkksParams
from crypto.updates import (
    MAX_LENGTH,
    DecryptedMean,
    EncryptedUpdate,
    decrypt_mean,
    encrypt_update,
    max_update_nbytes,
    sum_updates,
)

__all__ = [
    "MAX_LENGTH",
    "MAX_MODULUS_BITS_128",
    "MAX_SUMMANDS",
    "AggregatorContext",
    "CkksParams",
    "ContextMismatchError",
    "CryptoError",
    "DecryptedMean",
    "DecryptionError",
    "EncryptedUpdate",
    "KeyLeakError",
    "MalformedContextError",
    "MalformedUpdateError",
    "MissingSecretKeyError",
    "OversizeError",
    "ParameterError",
    "SecretContext",
    "ValueRangeError",
    "decrypt_mean",
    "encrypt_update",
    "max_update_nbytes",
    "sum_updates",
]
