"""Consent in a round: only rows with current consent are read, for training and evaluation.

The strongest check: withdrawing patients through the snapshot gives exactly the model (and the
published counts) of a data file from which their rows were physically removed.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crypto.codec import decrypt_weighted_mean, read_update
from demo.setup import STUDY_ID, Consortium, node_policy_toml
from hospitals import participation
from hospitals.consent import (
    ConsentSnapshot,
    FixedConsentSource,
    PortalConsentSource,
    create_or_load_secret,
    import_consent_export,
    load_secret,
    pseudonym,
    withdraw_consent,
)
from hospitals.data import holdout_score
from hospitals.demo_data import BREAST_CANCER_SCHEMA
from hospitals.keys import save_study_key
from hospitals.node import TOKEN_VARIABLE, NodeSettings
from hospitals.participation import (
    UPDATE_QUANTIZATION,
    RoundRefusedError,
    encrypt_model,
    evaluate_round,
    prepare,
    train_round,
)
from hospitals.portal_client import PortalClient
from tests.hospitals.fake_portal import TOKEN, FakePortal, running
from tests.hospitals.test_participation import node_of, request

# Without a weight unit every packed update has weight 1: the decrypted values lie within the
# quantization bound of one update.
QUANTIZATION_BOUND = UPDATE_QUANTIZATION.error_bound([1.0])
MAX_RADIUS = next(c.maximum for c in BREAST_CANCER_SCHEMA.features if c.name == "mean_radius")


def consented_node(
    consortium: Consortium,
    directory: Path,
    *,
    data_path: Path | None = None,
    policy: str | None = None,
    portal_url: str | None = None,
    secret: bool = True,
) -> NodeSettings:
    """A node of hospital A (same name, so the same training seed) in its own directory, whose
    policy asks for consent."""
    base = node_of(consortium)
    state = directory / "state"
    save_study_key(state / "keys", study_id=STUDY_ID, context=consortium.key)
    policy_path = directory / "policy.toml"
    policy_path.write_text(
        policy
        if policy is not None
        else node_policy_toml(study_id=STUDY_ID, max_lifetime_epsilon=10.0)
    )
    node = NodeSettings(
        hospital=base.hospital,
        data_path=data_path or base.data_path,
        state_dir=state,
        policy_path=policy_path,
        dataset_id=base.dataset_id,
        portal_url=portal_url,
    )
    if secret:
        create_or_load_secret(node)
    return node


def patient_ids(path: Path) -> list[str]:
    return pd.read_csv(path, dtype=str)["patient_id"].tolist()


def granting(node: NodeSettings, ids: Collection[str]) -> FixedConsentSource:
    secret = load_secret(node)
    return FixedConsentSource(
        ConsentSnapshot.of(
            study=STUDY_ID, institution=node.hospital, granted={pseudonym(i, secret) for i in ids}
        )
    )


@pytest.fixture
def poisoned(make_consortium, tmp_path):
    """Hospital A's file where every 5th patient carries a strong, wrong signal (label flipped,
    mean_radius at its maximum), and the same file with those rows removed."""
    consortium = make_consortium(rounds=2)
    frame = pd.read_csv(node_of(consortium).data_path, dtype=str)
    withdrawn = np.arange(len(frame)) % 5 == 0
    frame.loc[withdrawn, "malignant"] = frame.loc[withdrawn, "malignant"].map({"0": "1", "1": "0"})
    frame.loc[withdrawn, "mean_radius"] = str(MAX_RADIUS)
    full, removed = tmp_path / "full.csv", tmp_path / "removed.csv"
    frame.to_csv(full, index=False)
    frame[~withdrawn].to_csv(removed, index=False)
    ids = frame["patient_id"].tolist()
    withdrawn_ids = [pid for pid, out in zip(ids, withdrawn, strict=True) if out]
    kept_ids = [pid for pid, out in zip(ids, withdrawn, strict=True) if not out]
    # Some withdrawn patients would be held out, so evaluation is tested too.
    assert any(holdout_score(pid, salt=STUDY_ID) < 0.2 for pid in withdrawn_ids)
    return consortium, full, removed, withdrawn_ids, kept_ids


@pytest.fixture
def encrypted_plaintexts(monkeypatch):
    """The exact parameters each train_round encrypts."""
    captured: list[np.ndarray] = []
    real = participation.encrypt_model

    def spy(key, values, **weighting):
        captured.append(np.array(values, copy=True))
        return real(key, values, **weighting)

    monkeypatch.setattr(participation, "encrypt_model", spy)
    return captured


def decrypted(consortium: Consortium, update: bytes, length: int) -> np.ndarray:
    state = read_update(update, context=consortium.key, expected_length=length, max_bytes=1 << 30)
    return decrypt_weighted_mean(consortium.key, state).mean


def test_withdrawn_patients_leave_no_trace_in_the_update(poisoned, tmp_path, encrypted_plaintexts):
    consortium, full, removed, withdrawn_ids, kept_ids = poisoned
    filtered = consented_node(consortium, tmp_path / "filtered", data_path=full)
    physical = consented_node(consortium, tmp_path / "physical", data_path=removed)
    everyone = consented_node(consortium, tmp_path / "everyone", data_path=full)
    snapshot = granting(filtered, kept_ids)

    by_consent = train_round(filtered, request(consortium, 1), consent=snapshot)
    by_removal = train_round(physical, request(consortium, 1), consent=granting(physical, kept_ids))
    with_them = train_round(
        everyone, request(consortium, 1), consent=granting(everyone, kept_ids + withdrawn_ids)
    )

    consent_params, removal_params, everyone_params = encrypted_plaintexts
    assert np.array_equal(consent_params, removal_params)
    assert by_consent.rows_rounded == by_removal.rows_rounded
    assert by_consent.step == by_removal.step
    assert by_consent.consent == snapshot.fixed.sha256
    # What the ciphertexts carry is those parameters (CKKS adds ~1e-12 of noise).
    length = len(consent_params)
    np.testing.assert_allclose(
        decrypted(consortium, by_consent.update, length),
        consent_params,
        rtol=0,
        atol=QUANTIZATION_BOUND,
    )
    np.testing.assert_allclose(
        decrypted(consortium, by_removal.update, length),
        removal_params,
        rtol=0,
        atol=QUANTIZATION_BOUND,
    )
    # The withdrawn rows' signal is real: with them the model is another one.
    assert with_them.rows_rounded > by_consent.rows_rounded
    assert np.abs(everyone_params - consent_params).max() > 1e-2


def test_evaluation_leaves_withdrawn_patients_out_too(poisoned, tmp_path):
    consortium, full, removed, withdrawn_ids, kept_ids = poisoned
    filtered = consented_node(consortium, tmp_path / "filtered", data_path=full)
    physical = consented_node(consortium, tmp_path / "physical", data_path=removed)
    everyone = consented_node(consortium, tmp_path / "everyone", data_path=full)
    model = np.linspace(-0.5, 0.5, 31)
    model[1] = 2.0  # leans on mean_radius, where the withdrawn rows sit at the maximum
    state = encrypt_model(consortium.key, model, rows=1, weight_unit=None).to_bytes()
    evaluation = request(consortium, 1, global_state=state)

    by_consent = evaluate_round(filtered, evaluation, consent=granting(filtered, kept_ids))
    by_removal = evaluate_round(physical, evaluation, consent=granting(physical, kept_ids))
    with_them = evaluate_round(
        everyone, evaluation, consent=granting(everyone, kept_ids + withdrawn_ids)
    )

    assert by_consent.metrics == by_removal.metrics
    assert by_consent.rows_rounded == by_removal.rows_rounded
    assert with_them.metrics.n > by_consent.metrics.n
    assert with_them.metrics.accuracy != by_consent.metrics.accuracy


def test_patients_never_asked_are_left_out(make_consortium, tmp_path):
    consortium = make_consortium(rounds=1)
    node = consented_node(consortium, tmp_path / "node")
    ids = patient_ids(node.data_path)

    prepared = prepare(node, request(consortium, 1), consent=granting(node, ids[:150]))

    used = set(prepared.train.patient_ids) | set(prepared.holdout.patient_ids)
    assert used == set(ids[:150])


def test_no_portal_and_no_waiver_refuses_the_round(make_consortium, tmp_path):
    consortium = make_consortium(rounds=1)
    node = consented_node(consortium, tmp_path / "node")

    with pytest.raises(RoundRefusedError) as refusal:
        train_round(node, request(consortium, 1))

    assert refusal.value.code == "consent-unavailable"
    assert "portal-url" in refusal.value.reason and "consent_waiver" in refusal.value.reason
    assert not node.ledger_path.exists()  # nothing charged


def test_a_missing_consent_secret_refuses_the_round(make_consortium, tmp_path):
    consortium = make_consortium(rounds=1)
    node = consented_node(consortium, tmp_path / "node", secret=False)
    source = FixedConsentSource(ConsentSnapshot.of(study=STUDY_ID, institution="a", granted=()))

    with pytest.raises(RoundRefusedError) as refusal:
        train_round(node, request(consortium, 1), consent=source)

    assert refusal.value.code == "consent-unavailable"
    assert "consent secret" in refusal.value.reason
    assert str(node.state_dir) not in refusal.value.reason  # paths stay in the node log
    assert "consent-secret" in node.log_path.read_text()


def test_an_unreachable_portal_refuses_the_round(make_consortium, tmp_path, monkeypatch):
    consortium = make_consortium(rounds=1)
    node = consented_node(consortium, tmp_path / "node", portal_url="http://127.0.0.1:9")
    monkeypatch.setenv(TOKEN_VARIABLE, TOKEN)

    with pytest.raises(RoundRefusedError) as refusal:
        train_round(node, request(consortium, 1))

    assert refusal.value.code == "consent-unavailable"
    assert "unreachable" in refusal.value.reason


def test_a_tampered_snapshot_refuses_the_round(make_consortium, tmp_path, monkeypatch):
    consortium = make_consortium(rounds=1)
    with running(FakePortal(institution="hospital-a", snapshot_tamper=True)) as portal:
        node = consented_node(consortium, tmp_path / "node", portal_url=portal.url)
        monkeypatch.setenv(TOKEN_VARIABLE, TOKEN)
        with pytest.raises(RoundRefusedError) as refusal:
            train_round(node, request(consortium, 1))

    assert refusal.value.code == "consent-unavailable"
    assert "does not match its sha256" in refusal.value.reason


def test_too_few_consented_rows_is_refused_naming_the_count(make_consortium, tmp_path):
    consortium = make_consortium(rounds=1)
    node = consented_node(consortium, tmp_path / "node")
    ids = patient_ids(node.data_path)

    with pytest.raises(RoundRefusedError) as refusal:
        train_round(node, request(consortium, 1), consent=granting(node, ids[:40]))

    assert refusal.value.code == "cohort-too-small"
    assert refusal.value.reason == (
        "40 consented rows is below the node policy's minimum cohort of 50"
    )
    assert not node.ledger_path.exists()  # nothing charged


def test_nobody_consented_is_too_small_a_cohort(make_consortium, tmp_path):
    consortium = make_consortium(rounds=1)
    node = consented_node(consortium, tmp_path / "node")

    with pytest.raises(RoundRefusedError, match="^0 consented rows"):
        train_round(node, request(consortium, 1), consent=granting(node, []))


def test_a_withdrawal_between_rounds_applies_from_the_next_round(
    make_consortium, tmp_path, monkeypatch
):
    consortium = make_consortium(rounds=2)
    monkeypatch.setenv(TOKEN_VARIABLE, TOKEN)
    with running(FakePortal(institution="hospital-a")) as portal:
        node = consented_node(consortium, tmp_path / "node", portal_url=portal.url, secret=False)
        ids = patient_ids(node.data_path)
        export = tmp_path / "consent.csv"
        export.write_text(
            "patient_id,status,date,form_version\n"
            + "".join(f"{pid},granted,2025-02-01,1\n" for pid in ids)
        )
        import_consent_export(node, study=STUDY_ID, path=export, portal=PortalClient.for_node(node))

        first = train_round(node, request(consortium, 1))
        for pid in ids[:40]:
            withdraw_consent(
                node, study=STUDY_ID, patient_id=pid, portal=PortalClient.for_node(node)
            )
        evaluated = evaluate_round(node, request(consortium, 1))
        second = train_round(node, request(consortium, 2))

    snapshots = [path for method, path, _ in portal.requests if path.endswith("/snapshot/")]
    assert len(snapshots) == 3  # pulled for every message
    assert first.consent != evaluated.consent == second.consent
    assert second.rows_rounded < first.rows_rounded
    assert evaluated.metrics.n < len(ids)


def test_the_snapshot_source_is_the_portal_by_default(make_consortium, tmp_path, monkeypatch):
    consortium = make_consortium(rounds=1)
    monkeypatch.setenv(TOKEN_VARIABLE, TOKEN)
    with running(FakePortal(institution="hospital-a")) as portal:
        node = consented_node(consortium, tmp_path / "node", portal_url=portal.url)
        expected = PortalConsentSource(PortalClient.for_node(node)).snapshot(STUDY_ID)
        with pytest.raises(RoundRefusedError) as refusal:  # nobody has consented yet
            train_round(node, request(consortium, 1))

    assert refusal.value.code == "cohort-too-small"
    assert expected.granted == frozenset()


def test_a_waiver_uses_every_row_and_says_so(make_consortium, tmp_path):
    consortium = make_consortium(rounds=1)
    waiver = "Ethics board X, decision 2026-041: individual consent waived"
    node = consented_node(
        consortium,
        tmp_path / "node",
        policy=node_policy_toml(
            study_id=STUDY_ID, max_lifetime_epsilon=10.0, consent_waiver=waiver
        ),
        secret=False,
    )
    # A source that would refuse everything: the policy's waiver decides, not the source.
    nobody = FixedConsentSource(ConsentSnapshot.of(study=STUDY_ID, institution="x", granted=()))

    prepared = prepare(node, request(consortium, 1), consent=nobody)

    assert prepared.consent.label == f"waived: {waiver}"
    assert len(prepared.train) + len(prepared.holdout) == len(patient_ids(node.data_path))
