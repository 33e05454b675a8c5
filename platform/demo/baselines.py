"""The comparisons the federated model is judged against, all on the common held-out test set.

- local-only: each hospital trains alone on its own training rows, with the same DP budget;
- centralized: one non-private model on every hospital's training rows pooled (what federation
  without privacy constraints could at best approach).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import nn

from hospitals.consent import GRANTED, read_consent_export
from hospitals.data import LocalDataset, load_dataset, split_holdout
from hospitals.demo_data import CONSENT_FORM_VERSION
from hospitals.dp import (
    plan_noise_multiplier,
    sample_rate_for,
    steps_per_round,
    train_dp,
    train_plain,
)
from hospitals.evaluation import Metrics, evaluate
from hospitals.models import build_model, set_flat_parameters
from hospitals.protocol import StudyProtocol


def training_rows(
    protocol: StudyProtocol, data_path: Path, *, consent_export: Path | None
) -> LocalDataset:
    """The same rows a hospital node trains on: its consented patients (all of them when the
    node runs under a consent waiver) minus its deterministic held-out split."""
    include = None
    if consent_export is not None:
        decisions = read_consent_export(consent_export, versions={CONSENT_FORM_VERSION})
        granted = {decision.patient_id for decision in decisions if decision.status == GRANTED}
        include = granted.__contains__
    dataset = load_dataset(data_path, protocol.schema, include=include)
    train, _ = split_holdout(dataset, fraction=protocol.holdout_fraction, salt=protocol.study_id)
    return train


def fresh_model(protocol: StudyProtocol) -> nn.Module:
    return build_model(protocol.model, n_features=protocol.schema.n_features, seed=protocol.seed)


def local_only(protocol: StudyProtocol, train: LocalDataset, *, seed: int) -> nn.Module:
    """Train alone for as many epochs as the federation ran, with σ set for the same target ε."""
    model = fresh_model(protocol)
    steps = steps_per_round(n_rows=len(train), training=protocol.training)
    sample_rate = sample_rate_for(n_rows=len(train), batch_size=protocol.training.batch_size)
    noise = plan_noise_multiplier(
        dp=protocol.privacy, sample_rate=sample_rate, total_steps=steps * protocol.rounds
    )
    for round_number in range(protocol.rounds):
        train_dp(
            model,
            features=train.features,
            labels=train.labels,
            training=protocol.training,
            noise_multiplier=noise,
            max_grad_norm=protocol.privacy.max_grad_norm,
            delta=protocol.privacy.delta,
            seed=seed + round_number,
            accountant=protocol.privacy.accountant,
        )
    return model


def centralized(protocol: StudyProtocol, trains: Sequence[LocalDataset], *, seed: int) -> nn.Module:
    model = fresh_model(protocol)
    features = np.concatenate([train.features for train in trains])
    labels = np.concatenate([train.labels for train in trains])
    for round_number in range(protocol.rounds):
        train_plain(
            model,
            features=features,
            labels=labels,
            training=protocol.training,
            seed=seed + round_number,
        )
    return model


def released(protocol: StudyProtocol, parameters: np.ndarray) -> nn.Module:
    model = fresh_model(protocol)
    set_flat_parameters(model, parameters)
    return model


def metrics_on(model: nn.Module, test: LocalDataset) -> Metrics:
    return evaluate(model, features=test.features, labels=test.labels)
