import multiprocessing
import sqlite3
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hospitals.dp import Accountant, PrivacyStep, epsilon_of
from hospitals.ledger import (
    BudgetExceededError,
    LedgerUnreadableError,
    PrivacyLedger,
)

DELTA = 1e-5
RDP = Accountant.RDP


def round_step(*, steps: int = 50, noise_multiplier: float = 1.0) -> PrivacyStep:
    return PrivacyStep(
        sample_rate=0.1, noise_multiplier=noise_multiplier, steps=steps, delta=DELTA, accountant=RDP
    )


def lifetime_epsilon(steps: list[PrivacyStep]) -> float:
    return epsilon_of(steps, delta=DELTA, accountant=RDP)


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "ledger" / "privacy.sqlite3"


def record_round(ledger: PrivacyLedger, **overrides: object) -> None:
    fields: dict[str, object] = {
        "dataset_id": "hospital-a",
        "study_id": "sepsis-2026",
        "run_id": "12",
        "round_number": 1,
        "step": round_step(),
    }
    ledger.record(**{**fields, **overrides})  # type: ignore[arg-type]


def test_history_survives_a_restart(ledger_path: Path) -> None:
    first = PrivacyLedger(ledger_path)
    before = datetime.now(UTC)
    entry = first.record(
        dataset_id="hospital-a",
        study_id="sepsis-2026",
        run_id="12",
        round_number=1,
        step=round_step(steps=30),
    )
    record_round(first, round_number=2, step=round_step(steps=40, noise_multiplier=1.3))

    entries = PrivacyLedger(ledger_path).entries(dataset_id="hospital-a")

    assert ledger_path.exists()
    assert [e.round_number for e in entries] == [1, 2]
    assert entries[0] == entry
    assert entries[1].step == round_step(steps=40, noise_multiplier=1.3)
    assert entries[0].recorded_at.tzinfo is not None
    assert before <= entries[0].recorded_at <= datetime.now(UTC) + timedelta(seconds=1)


def test_stored_parameters_are_exact(ledger_path: Path) -> None:
    awkward = PrivacyStep(
        sample_rate=1 / 93,
        noise_multiplier=2.568359375,
        steps=92,
        delta=1e-7,
        accountant=Accountant.PRV,
    )
    record_round(PrivacyLedger(ledger_path), step=awkward)

    (entry,) = PrivacyLedger(ledger_path).entries(dataset_id="hospital-a")

    assert entry.step == awkward
    assert entry.step.accountant is Accountant.PRV


def test_epsilon_is_epsilon_of_the_recorded_steps(ledger_path: Path) -> None:
    ledger = PrivacyLedger(ledger_path)
    steps = [round_step(steps=30), round_step(steps=60, noise_multiplier=1.5), round_step()]
    for number, step in enumerate(steps, start=1):
        record_round(ledger, round_number=number, step=step)

    for accountant in Accountant:
        assert PrivacyLedger(ledger_path).epsilon(
            dataset_id="hospital-a", delta=DELTA, accountant=accountant
        ) == epsilon_of(steps, delta=DELTA, accountant=accountant)
    assert ledger.epsilon(dataset_id="hospital-b", delta=DELTA, accountant=RDP) == 0.0


def test_filters_by_study_and_run(ledger_path: Path) -> None:
    ledger = PrivacyLedger(ledger_path)
    record_round(ledger, study_id="sepsis-2026", run_id="1")
    record_round(ledger, study_id="sepsis-2026", run_id="2")
    record_round(ledger, study_id="sepsis-2026", run_id="2", round_number=2)
    record_round(ledger, study_id="readmission-2027", run_id="3")
    record_round(ledger, dataset_id="hospital-b", study_id="sepsis-2026", run_id="2")

    def keys(**filters: str) -> list[tuple[str, str, int]]:
        return [
            (entry.study_id, entry.run_id, entry.round_number)
            for entry in ledger.entries(dataset_id="hospital-a", **filters)
        ]

    assert len(keys()) == 4
    assert keys(study_id="sepsis-2026") == [
        ("sepsis-2026", "1", 1),
        ("sepsis-2026", "2", 1),
        ("sepsis-2026", "2", 2),
    ]
    assert keys(run_id="2") == [("sepsis-2026", "2", 1), ("sepsis-2026", "2", 2)]
    assert keys(study_id="readmission-2027", run_id="2") == []
    run_epsilon = ledger.epsilon(dataset_id="hospital-a", delta=DELTA, accountant=RDP, run_id="2")
    assert run_epsilon == lifetime_epsilon([round_step(), round_step()])
    assert run_epsilon < ledger.epsilon(dataset_id="hospital-a", delta=DELTA, accountant=RDP)


def test_affordable_round_returns_the_projected_lifetime_epsilon(ledger_path: Path) -> None:
    ledger = PrivacyLedger(ledger_path)
    record_round(ledger)

    projected = ledger.ensure_affordable(
        dataset_id="hospital-a",
        planned=round_step(),
        cap=10.0,
        delta=DELTA,
        accountant=RDP,
        context="round 2 of run 12",
    )

    assert projected == lifetime_epsilon([round_step(), round_step()])


def test_refuses_past_the_cap_after_a_restart(ledger_path: Path) -> None:
    ledger = PrivacyLedger(ledger_path)
    for number in (1, 2, 3):
        record_round(ledger, round_number=number)
    spent = lifetime_epsilon([round_step()] * 3)
    projected = lifetime_epsilon([round_step()] * 4)
    cap = (spent + projected) / 2

    with pytest.raises(BudgetExceededError) as raised:
        PrivacyLedger(ledger_path).ensure_affordable(
            dataset_id="hospital-a",
            planned=round_step(),
            cap=cap,
            delta=DELTA,
            accountant=RDP,
            context="round 4 of run 12",
        )

    error = raised.value
    assert (error.dataset_id, error.spent, error.projected, error.cap) == (
        "hospital-a",
        spent,
        projected,
        cap,
    )
    assert str(error) == (
        f"round 4 of run 12 refused: dataset 'hospital-a' has spent ε={spent:.2f} of its "
        f"lifetime cap {cap:.2f} (δ=1e-05, rdp); this round would bring it to {projected:.2f}"
    )


def test_the_cap_counts_every_study_and_run(ledger_path: Path) -> None:
    ledger = PrivacyLedger(ledger_path)
    record_round(ledger, study_id="sepsis-2026", run_id="1")
    record_round(ledger, study_id="readmission-2027", run_id="2")
    one_more = lifetime_epsilon([round_step()] * 3)

    with pytest.raises(BudgetExceededError):
        ledger.ensure_affordable(
            dataset_id="hospital-a",
            planned=round_step(),
            cap=one_more * 0.99,
            delta=DELTA,
            accountant=RDP,
            context="round 1 of run 3",
        )
    # Another dataset of the same node has its own budget.
    ledger.ensure_affordable(
        dataset_id="hospital-b",
        planned=round_step(),
        cap=one_more * 0.99,
        delta=DELTA,
        accountant=RDP,
        context="round 1 of run 3",
    )


@pytest.mark.parametrize("damage", ["garbage", "dropped-table", "dropped-table, reopened"])
def test_an_unreadable_ledger_refuses(ledger_path: Path, damage: str) -> None:
    ledger = PrivacyLedger(ledger_path)
    record_round(ledger)
    if damage == "garbage":
        for leftover in ledger_path.parent.glob(ledger_path.name + "-*"):
            leftover.unlink()
        ledger_path.write_bytes(b"this is not a database" * 400)
    else:
        with sqlite3.connect(ledger_path) as connection:
            connection.execute("DROP TABLE privacy_spend")
    if damage.endswith("reopened"):
        # As the next round opens it: the ledger must not start again empty.
        ledger = PrivacyLedger(ledger_path)

    with pytest.raises(LedgerUnreadableError) as raised:
        ledger.ensure_affordable(
            dataset_id="hospital-a",
            planned=round_step(),
            cap=100.0,
            delta=DELTA,
            accountant=RDP,
            context="round 2 of run 12",
        )
    assert isinstance(raised.value, BudgetExceededError)
    assert "round 2 of run 12 refused" in str(raised.value)
    assert str(ledger_path) in str(raised.value)


def test_opening_a_ledger_writes_nothing_to_it(ledger_path: Path) -> None:
    record_round(PrivacyLedger(ledger_path))
    before = ledger_path.stat().st_mtime_ns, ledger_path.read_bytes()

    PrivacyLedger(ledger_path)

    assert (ledger_path.stat().st_mtime_ns, ledger_path.read_bytes()) == before


def test_a_ledger_of_another_schema_version_is_refused(ledger_path: Path) -> None:
    ledger_path.parent.mkdir(parents=True)
    with sqlite3.connect(ledger_path) as connection:
        connection.execute("PRAGMA user_version = 7")

    with pytest.raises(RuntimeError, match="schema version 7"):
        PrivacyLedger(ledger_path)


def test_charge_records_only_what_fits(ledger_path: Path) -> None:
    ledger = PrivacyLedger(ledger_path)
    cap = (lifetime_epsilon([round_step()]) + lifetime_epsilon([round_step()] * 2)) / 2
    charge = {
        "dataset_id": "hospital-a",
        "study_id": "sepsis-2026",
        "run_id": "12",
        "step": round_step(),
        "cap": cap,
        "delta": DELTA,
        "accountant": RDP,
    }

    ledger.charge(round_number=1, context="round 1 of run 12", **charge)  # type: ignore[arg-type]
    with pytest.raises(BudgetExceededError, match="round 2 of run 12 refused"):
        ledger.charge(round_number=2, context="round 2 of run 12", **charge)  # type: ignore[arg-type]

    assert [e.round_number for e in ledger.entries(dataset_id="hospital-a")] == [1]


def _charge_in_another_process(path: str, round_number: int, cap: float) -> None:
    try:
        PrivacyLedger(Path(path)).charge(
            dataset_id="hospital-a",
            study_id="sepsis-2026",
            run_id=f"run-{round_number}",
            round_number=round_number,
            step=round_step(),
            cap=cap,
            delta=DELTA,
            accountant=RDP,
            context=f"round {round_number}",
        )
    except BudgetExceededError:
        raise SystemExit(3) from None


def test_concurrent_processes_cannot_overspend_together(ledger_path: Path) -> None:
    PrivacyLedger(ledger_path)
    two_rounds = lifetime_epsilon([round_step()] * 2)
    cap = (two_rounds + lifetime_epsilon([round_step()] * 3)) / 2
    # fork: the children inherit the imported modules instead of importing torch again.
    context = multiprocessing.get_context("fork")
    processes = [
        context.Process(target=_charge_in_another_process, args=(str(ledger_path), number, cap))
        for number in range(1, 6)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)

    assert Counter(process.exitcode for process in processes) == Counter({0: 2, 3: 3})
    ledger = PrivacyLedger(ledger_path)
    assert len(ledger.entries(dataset_id="hospital-a")) == 2
    assert ledger.epsilon(dataset_id="hospital-a", delta=DELTA, accountant=RDP) == two_rounds
