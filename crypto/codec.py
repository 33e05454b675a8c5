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
    PackedSum,
    PackedUpdate,
    decrypt_packed_mean,
)
from crypto.params import CkksParams
from crypto.updates import (
    DecryptedMean,
    EncryptedSum,
    EncryptedUpdate,
    decrypt_mean,
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
    check_ciphertexts: bool = True,
) -> Update:
    """Parse and fully validate an update in the study's format (see the two ``from_bytes``).

    A caller that adds the update to an :class:`UpdateSum` or decrypts it at once may pass
    ``check_ciphertexts=False``: that step loads and checks every ciphertext anyway, and refuses
    the whole update if one fails, so they are not loaded twice. Everything else (size, study,
    format, lengths, chunk framing) is still checked here.
    """
    kind = PackedUpdate if is_packed(context.params) else EncryptedUpdate
    return kind.from_bytes(
        data,
        context=context,
        expected_length=expected_length,
        max_bytes=max_bytes,
        check_ciphertexts=check_ciphertexts,
    )


def summing_shape(update: Update) -> str:
    """What updates must share to be summed together, in words.

    Their length, and a packed update's quantization.
    """
    if isinstance(update, PackedUpdate):
        scheme = update.quantization
        return (
            f"{update.length} values quantized to {scheme.value_bits} bits within "
            f"±{scheme.clip:g} with {scheme.headroom_bits} headroom bits"
        )
    return f"{update.length} values"


class UpdateSum:
    """Updates of one format, summed as they are added, whichever format the study uses.

    See :class:`crypto.PackedSum`: an update that fails is refused whole, the sum unchanged.
    """

    def __init__(self, context: SecretContext | AggregatorContext) -> None:
        """An empty sum under the study's context (keyless or not)."""
        self._context = context
        self._sum: PackedSum | EncryptedSum | None = None

    @property
    def count(self) -> int:
        """How many updates the sum holds."""
        return 0 if self._sum is None else self._sum.count

    def add(self, update: Update) -> None:
        """Add ``update``; raises as :meth:`crypto.PackedSum.add` does.

        Raises:
            TypeError: ``update`` is not in the format of the first update added.
        """
        if self._sum is None:
            self._sum = (
                PackedSum(self._context)
                if isinstance(update, PackedUpdate)
                else EncryptedSum(self._context)
            )
        if isinstance(self._sum, PackedSum) and isinstance(update, PackedUpdate):
            self._sum.add(update)
        elif isinstance(self._sum, EncryptedSum) and isinstance(update, EncryptedUpdate):
            self._sum.add(update)
        else:
            raise TypeError("updates of one sum must all be in the same format")

    def total(self) -> Update:
        """The sum so far, as an update (raises ValueError while it holds none)."""
        if self._sum is None:
            raise ValueError("the sum holds no update yet")
        return self._sum.total()


def add_updates(context: SecretContext | AggregatorContext, updates: Sequence[Update]) -> Update:
    """Sum updates of one format; needs no key."""
    if not updates:
        raise TypeError("add_updates needs at least one update, all in the same format")
    running = UpdateSum(context)
    for update in updates:
        running.add(update)
    return running.total()


def decrypt_weighted_mean(context: SecretContext, update: Update) -> DecryptedMean:
    """The weighted mean a (summed) update carries, whichever its format."""
    if isinstance(update, PackedUpdate):
        return decrypt_packed_mean(context, update)
    return decrypt_mean(context, update)
