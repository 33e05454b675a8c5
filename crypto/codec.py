"""Both update formats behind one call per step: a study's CKKS parameters choose the format.

A study keyed with :data:`crypto.PACKED_PARAMS` exchanges :class:`crypto.PackedUpdate` updates
(quantized, four values per slot); any other study the one-value-per-slot
:class:`crypto.EncryptedUpdate`. The aggregator and the hospitals call these functions and never
need to know which one their study uses.
"""

from __future__ import annotations

from collections.abc import Sequence

from crypto.keys import AggregatorContext, SecretContext
from crypto.packing import (
    PACKED_PARAMS,
    PackedUpdate,
    decrypt_packed_mean,
    sum_packed_updates,
)
from crypto.params import CkksParams
from crypto.updates import (
    DecryptedMean,
    EncryptedUpdate,
    decrypt_mean,
    sum_updates,
)

Update = EncryptedUpdate | PackedUpdate


def is_packed(params: CkksParams) -> bool:
    """Whether a study with these parameters exchanges packed updates."""
    return params == PACKED_PARAMS


def read_update(
    data: bytes,
    *,
    context: SecretContext | AggregatorContext,
    expected_length: int | None = None,
    max_bytes: int,
) -> Update:
    """Parse and fully validate an update in the study's format (see the two ``from_bytes``)."""
    kind = PackedUpdate if is_packed(context.params) else EncryptedUpdate
    return kind.from_bytes(
        data, context=context, expected_length=expected_length, max_bytes=max_bytes
    )


def add_updates(context: SecretContext | AggregatorContext, updates: Sequence[Update]) -> Update:
    """Sum updates of one format; needs no key."""
    packed = [update for update in updates if isinstance(update, PackedUpdate)]
    if packed and len(packed) == len(updates):
        return sum_packed_updates(context, packed)
    plain = [update for update in updates if isinstance(update, EncryptedUpdate)]
    if plain and len(plain) == len(updates):
        return sum_updates(context, plain)
    raise TypeError("add_updates needs at least one update, all in the same format")


def decrypt_weighted_mean(context: SecretContext, update: Update) -> DecryptedMean:
    """The weighted mean a (summed) update carries, whichever its format."""
    if isinstance(update, PackedUpdate):
        return decrypt_packed_mean(context, update)
    return decrypt_mean(context, update)
