"""Names of the records exchanged with hospitals: the aggregator's side of the wire contract.

Hospitals define the same names in `hospitals.wire`; a test keeps both sides equal, so the two
parties stay deployable on their own.
"""

from typing import Final

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
