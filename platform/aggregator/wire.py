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
GLOBAL_STATE: Final = (
    "global"  # ArrayRecord: the encrypted sum of the previous round (absent in round 1)
)

# Sent back by hospitals.
UPDATE: Final = "update"  # ArrayRecord: the hospital's encrypted weighted model and weight
# ConfigRecord: who replied and under what (hospital name, protocol hash, accountant, ε
# conversion, consent basis), then, keys prefixed by section, what its training spent
# (TRAIN_SECTION: ε, DP parameters, rows rounded, seconds) and how the model it received scored
# (EVAL_SECTION: loss, accuracy, AUC, rows rounded). One record, not three: Flower sends each
# record of a reply as an object of its own, in one HTTP request on each of three hops.
REPORT: Final = "report"
TRAIN_SECTION: Final = "train."
EVAL_SECTION: Final = "eval."
REFUSAL: Final = "refusal"  # ConfigRecord: code and reason when a hospital declines a round

BLOB: Final = "bytes"  # the single raw Array inside UPDATE and GLOBAL_STATE
