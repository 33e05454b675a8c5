"""A node decrypts each global model once: evaluate of round r, then train of round r + 1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hospitals import participation
from hospitals.decrypted import MEMO_DIR, DecryptedGlobal
from hospitals.participation import evaluate_round, train_round
from tests.hospitals.test_participation import node_of, request

PARAMETERS = np.linspace(-1.0, 1.0, 31)


def test_a_kept_model_is_recalled_only_for_the_same_ciphertext(tmp_path: Path) -> None:
    DecryptedGlobal.of(tmp_path, b"ciphertext of round 1").keep(PARAMETERS)

    assert np.array_equal(
        DecryptedGlobal.of(tmp_path, b"ciphertext of round 1").recall(length=31), PARAMETERS
    )
    assert DecryptedGlobal.of(tmp_path, b"ciphertext of round 2").recall(length=31) is None
    assert DecryptedGlobal.of(tmp_path, b"ciphertext of round 1").recall(length=32) is None


def test_keeping_a_model_replaces_the_previous_one(tmp_path: Path) -> None:
    DecryptedGlobal.of(tmp_path, b"round 1").keep(PARAMETERS)
    DecryptedGlobal.of(tmp_path, b"round 2").keep(-PARAMETERS)

    assert DecryptedGlobal.of(tmp_path, b"round 1").recall(length=31) is None
    assert np.array_equal(DecryptedGlobal.of(tmp_path, b"round 2").recall(length=31), -PARAMETERS)
    assert len(list((tmp_path / MEMO_DIR).iterdir())) == 1


def test_a_damaged_memo_is_not_trusted(tmp_path: Path) -> None:
    DecryptedGlobal.of(tmp_path, b"round 1").keep(PARAMETERS)
    (memo,) = (tmp_path / MEMO_DIR).iterdir()
    memo.write_bytes(memo.read_bytes()[:100])

    assert DecryptedGlobal.of(tmp_path, b"round 1").recall(length=31) is None


@pytest.fixture
def decryptions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    decrypt = participation.decrypt_weighted_mean

    def counted(*args, **kwargs):
        calls.append(1)
        return decrypt(*args, **kwargs)

    monkeypatch.setattr(participation, "decrypt_weighted_mean", counted)
    return calls


def test_a_global_model_is_decrypted_once_for_its_evaluation_and_the_next_training(
    make_consortium, decryptions: list[int]
) -> None:
    consortium = make_consortium(rounds=2)
    node = node_of(consortium)
    update = train_round(node, request(consortium, 1)).update

    decrypted = evaluate_round(node, request(consortium, 1, global_state=update))
    remembered = evaluate_round(node, request(consortium, 1, global_state=update))
    train_round(node, request(consortium, 2, global_state=update))

    assert len(decryptions) == 1
    assert remembered.metrics == decrypted.metrics
