"""The wire contract between hospitals and the aggregator: the names of the records they exchange,
and how a blob (an encrypted update or global state) travels. Both parties import it.
"""

from typing import Final

from flwr.app import Array, ArrayRecord, RecordDict

# A train message's hospital evaluates the global model it carries, then trains from it; an
# evaluate message carries the final model, after the last round.
TRAIN: Final = "train"
EVALUATE: Final = "evaluate"

# Sent by the aggregator.
ROUND_CONFIG: Final = "round"  # ConfigRecord: study, round, protocol JSON, final flag, weight unit
GLOBAL_STATE: Final = "global"  # blob: the encrypted sum of the previous round (not in round 1)

# Sent back by hospitals.
UPDATE: Final = "update"  # blob: the hospital's encrypted weighted model and weight
# ConfigRecord: who replied and under what (hospital name, protocol hash, accountant, ε
# conversion, consent basis), then, keys prefixed by section, what its training spent
# (TRAIN_SECTION: ε, DP parameters, rows rounded, seconds) and how the model it received scored
# (EVAL_SECTION: loss, accuracy, AUC, rows rounded). One record, not three: Flower sends each
# record of a reply as an object of its own, in one HTTP request on each of three hops.
REPORT: Final = "report"
TRAIN_SECTION: Final = "train."
EVAL_SECTION: Final = "eval."
REFUSAL: Final = "refusal"  # ConfigRecord: code and reason when a hospital declines a round

# A blob of at most INLINE_MAX_BYTES travels as bytes under its name in its message's ConfigRecord
# (GLOBAL_STATE in ROUND_CONFIG, UPDATE in REPORT); a larger one as a record of its name, an
# ArrayRecord holding one raw Array (BLOB), which Flower sends in 5 MiB chunks. Flower sends each
# record, Array and chunk as an object of its own, in one HTTP request on each of three hops, so
# inline a message is three objects, not six. Beyond 1 MiB the requests saved weigh less than
# ConfigRecord bytes' cost: unchunked, and ~2.6× the CPU per byte of an Array.
INLINE_MAX_BYTES: Final = 1 << 20
BLOB: Final = "bytes"  # the single raw Array inside an UPDATE or GLOBAL_STATE record


def put_blob(content: RecordDict, name: str, blob: bytes, *, inline_in: str) -> None:
    """Put `blob` in `content` under `name` as INLINE_MAX_BYTES says: inline in `content`'s
    ConfigRecord `inline_in`, or as a record of its own."""
    if len(blob) <= INLINE_MAX_BYTES:
        content.config_records[inline_in][name] = blob
    else:
        content[name] = ArrayRecord(
            {BLOB: Array(dtype="bytes", shape=(len(blob),), stype="raw", data=blob)}
        )


def blob_of(content: RecordDict, name: str, *, inline_in: str) -> bytes:
    """The blob `put_blob` put in `content`: KeyError where there is none, TypeError or ValueError
    where something else stands under its name."""
    inline = content.config_records[inline_in].get(name)
    if inline is None:
        record = content.array_records[name]
        if BLOB not in record:
            raise ValueError(f"the {name} record holds no {BLOB!r} array")
        return bytes(record[BLOB].data)
    if not isinstance(inline, bytes):
        raise TypeError(f"{name} is {type(inline).__name__}, not bytes")
    return inline
