"""The node plans σ once per input: later messages, in other processes, read the same plan back."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from hospitals import plans
from hospitals.dp import Accountant, DpSettings, TrainingSettings, plan_round
from hospitals.plans import PLANS_FILE, remembered_plan

PRIVACY = DpSettings(target_epsilon=3.0, delta=1e-5, max_grad_norm=1.0, accountant=Accountant.RDP)
TRAINING = TrainingSettings(local_epochs=1, batch_size=32, learning_rate=0.1)


@pytest.fixture
def planned_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the real plans computed (one per call of plan_round that the memo could not avoid)."""
    calls: list[int] = []

    def counting(**inputs: object) -> object:
        calls.append(1)
        return plan_round(**inputs)  # type: ignore[arg-type]

    monkeypatch.setattr(plans, "plan_round", counting)
    return calls


def plan(state_dir: Path, *, n_rows: int = 500) -> object:
    return remembered_plan(state_dir, privacy=PRIVACY, training=TRAINING, rounds=5, n_rows=n_rows)


def test_a_plan_is_computed_once_and_read_back_equal(tmp_path: Path, planned_calls: list[int]):
    first = plan(tmp_path)
    again = plan(tmp_path)

    assert again == first == plan_round(privacy=PRIVACY, training=TRAINING, rounds=5, n_rows=500)
    assert len(planned_calls) == 1


def test_other_inputs_get_plans_of_their_own(tmp_path: Path, planned_calls: list[int]):
    small, large = plan(tmp_path, n_rows=200), plan(tmp_path, n_rows=2000)

    assert small.noise_multiplier != large.noise_multiplier  # type: ignore[attr-defined]
    assert (plan(tmp_path, n_rows=200), len(planned_calls)) == (small, 2)


def damage_the_record(memo: Path) -> None:
    (key,) = json.loads(memo.read_text())
    memo.write_text(json.dumps({key: {"sample_rate": 0.1, "steps": -1}}))


@pytest.mark.parametrize(
    "damage",
    [
        lambda memo: memo.write_text("{not json"),
        lambda memo: memo.write_text("[]"),
        damage_the_record,
    ],
)
def test_a_damaged_memo_is_planned_again_and_replaced(
    tmp_path: Path, planned_calls: list[int], damage: Callable[[Path], None]
):
    expected = plan(tmp_path)
    damage(tmp_path / PLANS_FILE)

    assert plan(tmp_path) == expected
    assert plan(tmp_path) == expected
    assert len(planned_calls) == 2
