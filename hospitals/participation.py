"""A hospital's part in one round: decrypt the global model, evaluate it, train it with DP-SGD
and encrypt the result; after the last round, decrypt and evaluate the final model.

Flower-free, so it can be tested directly. Everything that reaches the aggregator is chosen here:
an encrypted update, the DP parameters behind it, ε, rounded row counts, timings, metrics and
the consent basis (the consent snapshot's hash, or the ethics board's waiver). Only rows with
current consent are read, for training and evaluation alike; the snapshot is pulled again for
every message, so a withdrawal takes effect from the next round. Refusals carry a reason that is
safe to publish; details that could reveal data stay in the node log.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from torch import nn

from crypto import (
    CryptoError,
    Quantization,
    SecretContext,
    ValueRangeError,
    encrypt_packed,
    encrypt_update,
)
from crypto.codec import Update, decrypt_weighted_mean, is_packed, read_update
from hospitals.consent import (
    ConsentBasis,
    ConsentSource,
    ConsentUnavailableError,
    resolve_consent,
)
from hospitals.data import DataError, LocalDataset, load_dataset, split_holdout
from hospitals.dp import (
    PrivacyStep,
    epsilon_of,
    train_dp,
)
from hospitals.evaluation import Metrics, evaluate
from hospitals.keys import MissingStudyKeyError, load_study_key, study_key_path
from hospitals.ledger import BudgetExceededError, PrivacyLedger
from hospitals.models import build_model, get_flat_parameters, parameter_count, set_flat_parameters
from hospitals.node import NodeSettings, node_logger
from hospitals.parsed_files import ParsedFiles
from hospitals.plans import remembered_plan
from hospitals.policy import NodePolicy, PolicyError, load_policy
from hospitals.protocol import StudyProtocol

MAX_GLOBAL_STATE_BYTES = 1 << 30
PUBLISHED_ROW_GRANULARITY = 10
# Slack for float error when comparing a run's ε with the study's target.
TARGET_TOLERANCE = 1e-3
# Packed updates quantize every model value within ±8: DP-SGD models on features scaled by the
# schema (a declared range to [-1, 1], or z-scores against a declared reference) stay far inside
# it, and a value outside refuses the round rather than being clipped.
UPDATE_QUANTIZATION = Quantization(clip=8.0)
# This process's: in a node's task worker, each round's task finds the previous round's dataset
# (under the same consent snapshot) and study key parsed, unless their files changed. Rounds
# share them, read-only: a split copies the dataset's rows.
_DATASETS: ParsedFiles[LocalDataset] = ParsedFiles()
_STUDY_KEYS: ParsedFiles[SecretContext] = ParsedFiles()

T = TypeVar("T")


class RoundRefusedError(Exception):
    """The node declines this round; `reason` is published to the aggregator and the portal.

    A node that evaluated the model it received before declining to train it still reports that
    `evaluation`."""

    def __init__(
        self, code: str, reason: str, *, evaluation: EvaluationOutcome | None = None
    ) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.evaluation = evaluation


@dataclass(frozen=True)
class RoundRequest:
    run_id: str
    round_number: int
    protocol: StudyProtocol
    global_state: bytes | None
    final: bool = False
    # Rows that count as weight 1 in a packed update: public, set by the aggregator per round.
    weight_unit: int | None = None


@dataclass(frozen=True)
class TrainOutcome:
    update: bytes
    step: PrivacyStep
    run_epsilon: float
    rows_rounded: int
    train_seconds: float
    consent: str  # the consent snapshot's sha256, or "waived: <the ethics board's decision>"
    # The received global model (the previous round's) on this hospital's held-out rows; None in
    # round 1, which starts from the protocol's seed.
    evaluation: EvaluationOutcome | None = None


@dataclass(frozen=True)
class EvaluationOutcome:
    metrics: Metrics
    rows_rounded: int
    consent: str


@dataclass(frozen=True)
class Preparation:
    policy: NodePolicy
    key: SecretContext
    consent: ConsentBasis
    train: LocalDataset
    holdout: LocalDataset


@dataclass(frozen=True)
class Blocker:
    code: str
    reason: str


@dataclass(frozen=True)
class Readiness:
    """The node's own view of a study before a run: what it would use, and what would stop it."""

    consent: ConsentBasis | None
    rows_train: int
    rows_holdout: int
    blockers: tuple[Blocker, ...]


def prepare(
    node: NodeSettings, request: RoundRequest, *, consent: ConsentSource | None = None
) -> Preparation:
    """Everything the node checks before it touches a model; each failure is a RoundRefusedError.

    `consent` replaces the portal as the source of consent snapshots (tests); whether one is
    needed at all is the node policy's decision (its consent_waiver).
    """
    protocol = request.protocol
    policy = _policy(node)
    _check_study_allowed(policy, protocol)
    key = _study_key(node, protocol)
    _check_key_matches(key, protocol)
    basis = _consent(node, protocol, policy, consent)
    dataset = _consented_dataset(node, protocol, basis)
    _check_cohort(dataset, policy, basis)
    train, holdout = _split(dataset, protocol)
    return Preparation(policy=policy, key=key, consent=basis, train=train, holdout=holdout)


def assess(
    node: NodeSettings, protocol: StudyProtocol, *, consent: ConsentSource | None = None
) -> Readiness:
    """The checks of `prepare` without a round: every blocker found, and the rows a round would
    use. A missing key is a blocker, not an error; its fingerprint is checked once the protocol
    pins one."""
    blockers: list[Blocker] = []

    def attempt(check: Callable[[], T]) -> T | None:
        try:
            return check()
        except RoundRefusedError as refusal:
            blockers.append(Blocker(refusal.code, refusal.reason))
            return None

    policy = attempt(lambda: _policy(node))
    if policy is None:
        return Readiness(consent=None, rows_train=0, rows_holdout=0, blockers=tuple(blockers))
    attempt(lambda: _check_study_allowed(policy, protocol))
    key = attempt(lambda: _study_key(node, protocol))
    if key is not None and protocol.encryption is not None:
        attempt(lambda: _check_key_matches(key, protocol))
    basis = attempt(lambda: _consent(node, protocol, policy, consent))
    split = None
    if basis is not None:
        dataset = attempt(lambda: _consented_dataset(node, protocol, basis))
        if dataset is not None:
            found = len(blockers)
            attempt(lambda: _check_cohort(dataset, policy, basis))
            # Rows are counted even in a cohort too small, so the portal can show how far off
            # it is; a split that then fails is the same blocker, not another one.
            split = (
                attempt(lambda: _split(dataset, protocol))
                if len(blockers) == found
                else _split_or_none(dataset, protocol)
            )
    train, holdout = (len(split[0]), len(split[1])) if split is not None else (0, 0)
    return Readiness(
        consent=basis, rows_train=train, rows_holdout=holdout, blockers=tuple(blockers)
    )


def train_round(
    node: NodeSettings, request: RoundRequest, *, consent: ConsentSource | None = None
) -> TrainOutcome:
    """Evaluate the received global model on held-out rows, then train it on local rows with
    DP-SGD and encrypt the weighted result."""
    prepared = prepare(node, request, consent=consent)
    model = _global_model(prepared.key, request)
    evaluation = None if request.global_state is None else evaluate_prepared(model, prepared)
    try:
        return _train(node, request, prepared, model, evaluation)
    except RoundRefusedError as refusal:
        raise RoundRefusedError(refusal.code, refusal.reason, evaluation=evaluation) from refusal


def _train(
    node: NodeSettings,
    request: RoundRequest,
    prepared: Preparation,
    model: nn.Module,
    evaluation: EvaluationOutcome | None,
) -> TrainOutcome:
    trained = train_locally(node, request, prepared, model)
    update = _encrypted_update(
        prepared.key, get_flat_parameters(model), rows=len(prepared.train), request=request
    )
    return trained.outcome(update, prepared=prepared, evaluation=evaluation)


@dataclass(frozen=True)
class LocalTraining:
    """A round's DP-SGD, done: what it spent, the run's ε with it, and how long it took."""

    step: PrivacyStep
    run_epsilon: float
    seconds: float

    def outcome(
        self, update: bytes, *, prepared: Preparation, evaluation: EvaluationOutcome | None
    ) -> TrainOutcome:
        return TrainOutcome(
            update=update,
            step=self.step,
            run_epsilon=self.run_epsilon,
            rows_rounded=published_rows(len(prepared.train)),
            train_seconds=self.seconds,
            consent=prepared.consent.label,
            evaluation=evaluation,
        )


def train_locally(
    node: NodeSettings, request: RoundRequest, prepared: Preparation, model: nn.Module
) -> LocalTraining:
    """Plan the round's σ, charge it to the node's ledger (failing closed), then train `model`
    in place with DP-SGD on the prepared training rows."""
    protocol = request.protocol
    ledger = PrivacyLedger(node.ledger_path)
    planned = remembered_plan(
        node.state_dir,
        privacy=protocol.privacy,
        training=protocol.training,
        rounds=protocol.rounds,
        n_rows=len(prepared.train),
    )
    # Charged before training: budget spent counts even if the reply is later lost.
    _charge(node, request, ledger, prepared.policy, planned)
    started = time.perf_counter()
    train_dp(
        model,
        features=prepared.train.features,
        labels=prepared.train.labels,
        training=protocol.training,
        noise_multiplier=planned.noise_multiplier,
        max_grad_norm=protocol.privacy.max_grad_norm,
        delta=protocol.privacy.delta,
        seed=_round_seed(protocol, node.hospital, request.round_number),
        accountant=protocol.privacy.accountant,
        device=node.device,
    )
    seconds = time.perf_counter() - started
    return LocalTraining(planned, _run_epsilon(ledger, node, request), seconds)


def evaluate_round(
    node: NodeSettings, request: RoundRequest, *, consent: ConsentSource | None = None
) -> EvaluationOutcome:
    """Decrypt the final global model, evaluate it on this hospital's held-out rows and keep it
    for release. (Earlier rounds' models are evaluated as the next round trains them.)"""
    prepared = prepare(node, request, consent=consent)
    model = _global_model(prepared.key, request)
    evaluation = evaluate_prepared(model, prepared)
    if request.final:
        save_released_model(node, request, get_flat_parameters(model))
    return evaluation


def evaluate_prepared(model: nn.Module, prepared: Preparation) -> EvaluationOutcome:
    """`model` on the held-out rows of a prepared round."""
    holdout = prepared.holdout
    return EvaluationOutcome(
        metrics=evaluate(model, features=holdout.features, labels=holdout.labels),
        rows_rounded=published_rows(len(holdout)),
        consent=prepared.consent.label,
    )


def _encrypted_update(
    key: SecretContext, values: np.ndarray, *, rows: int, request: RoundRequest
) -> bytes:
    try:
        update = encrypt_model(key, values, rows=rows, weight_unit=request.weight_unit)
    except ValueRangeError as error:
        raise RoundRefusedError("update-out-of-range", str(error)) from error
    return update.to_bytes()


def encrypt_model(
    key: SecretContext, values: np.ndarray, *, rows: int, weight_unit: int | None
) -> Update:
    """A trained model encrypted in the study's format, weighted by its training rows.

    A packed weight is a share of the round's public weight unit, at most 1 (a hospital that grew
    past the unit since it was set counts as one unit). Without a unit, as in round 1 of a run
    started without a preflight, every hospital weighs the same.
    """
    if not is_packed(key.params):
        return encrypt_update(key, values=values, weight=rows)
    share = 1.0 if weight_unit is None else min(1.0, rows / weight_unit)
    return encrypt_packed(key, values=values, weight=share, quantization=UPDATE_QUANTIZATION)


def published_rows(count: int) -> int:
    """Row counts leave the node rounded, so the aggregator never learns exact cohort sizes."""
    return int(round(count / PUBLISHED_ROW_GRANULARITY)) * PUBLISHED_ROW_GRANULARITY


def released_model_path(node: NodeSettings, *, study_id: str, run_id: str) -> Path:
    return node.models_dir / study_id / f"run-{run_id}.npz"


def save_released_model(node: NodeSettings, request: RoundRequest, parameters: np.ndarray) -> Path:
    path = released_model_path(node, study_id=request.protocol.study_id, run_id=request.run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, parameters=parameters, protocol_sha256=request.protocol.sha256)
    return path


def _policy(node: NodeSettings) -> NodePolicy:
    try:
        return load_policy(node.policy_path)
    except PolicyError as error:
        raise RoundRefusedError("invalid-policy", str(error)) from error


def _check_study_allowed(policy: NodePolicy, protocol: StudyProtocol) -> None:
    if not policy.allows_study(protocol.study_id):
        raise RoundRefusedError(
            "study-not-allowed", f"node policy does not allow study '{protocol.study_id}'"
        )


def _study_key(node: NodeSettings, protocol: StudyProtocol) -> SecretContext:
    try:
        return _STUDY_KEYS.parsed(
            study_key_path(node.keys_dir, protocol.study_id),
            None,
            lambda: load_study_key(node.keys_dir, study_id=protocol.study_id),
        )
    except (MissingStudyKeyError, CryptoError) as error:
        raise RoundRefusedError("missing-key", str(error)) from error


def _check_key_matches(key: SecretContext, protocol: StudyProtocol) -> None:
    if protocol.encryption is None:
        raise RoundRefusedError(
            "missing-encryption", "the protocol pins no HE context; HE is required"
        )
    if key.fingerprint != protocol.encryption.context_fingerprint:
        raise RoundRefusedError(
            "key-mismatch",
            "the node's HE key for this study does not match the protocol's fingerprint",
        )


def _consent(
    node: NodeSettings, protocol: StudyProtocol, policy: NodePolicy, source: ConsentSource | None
) -> ConsentBasis:
    try:
        return resolve_consent(
            node, study_id=protocol.study_id, waiver=policy.consent_waiver, source=source
        )
    except ConsentUnavailableError as error:
        node_logger(node).error("no consent basis: %s (%r)", error, error.__cause__)
        raise RoundRefusedError("consent-unavailable", str(error)) from error


def _consented_dataset(
    node: NodeSettings, protocol: StudyProtocol, basis: ConsentBasis
) -> LocalDataset:
    try:
        return _DATASETS.parsed(
            node.data_path,
            (protocol.schema, basis.label, basis.secret),
            lambda: load_dataset(node.data_path, protocol.schema, include=basis.row_filter),
        )
    except DataError as error:
        # The error may quote a cell of the file: it stays in the node log, never in the reply.
        node_logger(node).error("dataset rejected: %s", error)
        raise RoundRefusedError(
            "invalid-data",
            "local data failed validation against the study schema "
            f"(details in {node.log_path.name} at the node)",
        ) from error


def _check_cohort(dataset: LocalDataset, policy: NodePolicy, basis: ConsentBasis) -> None:
    if len(dataset) < policy.min_cohort_size:
        usable = "usable" if basis.snapshot is None else "consented"
        raise RoundRefusedError(
            "cohort-too-small",
            f"{len(dataset)} {usable} rows is below the node policy's minimum cohort of "
            f"{policy.min_cohort_size}",
        )


def _split(dataset: LocalDataset, protocol: StudyProtocol) -> tuple[LocalDataset, LocalDataset]:
    try:
        return split_holdout(dataset, fraction=protocol.holdout_fraction, salt=protocol.study_id)
    except DataError as error:
        raise RoundRefusedError(
            "cohort-too-small",
            f"{len(dataset)} usable rows cannot be split into training and held-out rows with "
            f"the study's holdout fraction {protocol.holdout_fraction}",
        ) from error


def _split_or_none(
    dataset: LocalDataset, protocol: StudyProtocol
) -> tuple[LocalDataset, LocalDataset] | None:
    try:
        return _split(dataset, protocol)
    except RoundRefusedError:
        return None


def _global_model(key: SecretContext, request: RoundRequest) -> nn.Module:
    protocol = request.protocol
    model = build_model(protocol.model, n_features=protocol.schema.n_features, seed=protocol.seed)
    if request.global_state is None:
        return model
    try:
        state = read_update(
            request.global_state,
            context=key,
            expected_length=parameter_count(model),
            max_bytes=MAX_GLOBAL_STATE_BYTES,
            check_ciphertexts=False,  # decryption, next, loads and checks each one
        )
        set_flat_parameters(model, decrypt_weighted_mean(key, state).mean)
    except CryptoError as error:
        raise RoundRefusedError(
            "invalid-global-state", f"the global model could not be decrypted: {error}"
        ) from error
    return model


def _charge(
    node: NodeSettings,
    request: RoundRequest,
    ledger: PrivacyLedger,
    policy: NodePolicy,
    planned: PrivacyStep,
) -> None:
    """Fail closed on the study's target for this run, then on the node's lifetime cap."""
    where = f"round {request.round_number} of run {request.run_id}"
    privacy = request.protocol.privacy
    history = ledger.entries(dataset_id=node.dataset_id, run_id=request.run_id)
    projected = epsilon_of(
        [*(entry.step for entry in history), planned],
        delta=privacy.delta,
        accountant=privacy.accountant,
    )
    if projected > privacy.target_epsilon * (1 + TARGET_TOLERANCE):
        raise RoundRefusedError(
            "study-target-exceeded",
            f"{where} would bring this run to ε={projected:.3f}, "
            f"past the study's target {privacy.target_epsilon:g}",
        )
    try:
        ledger.charge(
            dataset_id=node.dataset_id,
            study_id=request.protocol.study_id,
            run_id=request.run_id,
            round_number=request.round_number,
            step=planned,
            cap=policy.max_lifetime_epsilon,
            delta=policy.delta,
            accountant=policy.accountant,
            context=where,
        )
    except BudgetExceededError as error:
        raise RoundRefusedError("budget-exceeded", str(error)) from error


def _run_epsilon(ledger: PrivacyLedger, node: NodeSettings, request: RoundRequest) -> float:
    privacy = request.protocol.privacy
    return ledger.epsilon(
        dataset_id=node.dataset_id,
        delta=privacy.delta,
        accountant=privacy.accountant,
        run_id=request.run_id,
    )


def _round_seed(protocol: StudyProtocol, hospital: str, round_number: int) -> int:
    digest = hashlib.sha256(f"{protocol.seed}:{hospital}:{round_number}".encode()).digest()
    return int.from_bytes(digest[:4], "big")
