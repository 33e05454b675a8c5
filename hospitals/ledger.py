"""The node's privacy ledger: its own authority on how much ε each local dataset has spent.

Every DP round is recorded with the exact (sample rate, noise multiplier, steps, δ, accountant) it
spent, so ε can be recomputed by anyone from the history alone. The ledger lives in SQLite in the
node's state directory, outlives runs and restarts, and is shared by the node's processes (Flower
starts a fresh ClientApp process per message): each write is one `BEGIN IMMEDIATE` transaction.
Budget checks fail closed: a ledger that cannot be read refuses the round.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from hospitals.dp import Accountant, PrivacyStep, epsilon_of

_SCHEMA_VERSION = 1
# A charge computes ε while holding the write lock (PRV over a long history takes seconds), so
# other processes of the node wait this long for it before giving up.
_BUSY_TIMEOUT_SECONDS = 60.0

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS privacy_spend (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset_id TEXT NOT NULL,
    study_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    round_number INTEGER NOT NULL CHECK (round_number >= 0),
    sample_rate REAL NOT NULL CHECK (sample_rate > 0 AND sample_rate <= 1),
    noise_multiplier REAL NOT NULL CHECK (noise_multiplier > 0),
    steps INTEGER NOT NULL CHECK (steps >= 1),
    delta REAL NOT NULL CHECK (delta > 0 AND delta < 1),
    accountant TEXT NOT NULL,
    recorded_at TEXT NOT NULL
)
"""
_CREATE_INDEX = """
CREATE INDEX IF NOT EXISTS privacy_spend_by_dataset
ON privacy_spend (dataset_id, study_id, run_id)
"""
_INSERT = """
INSERT INTO privacy_spend (
    dataset_id, study_id, run_id, round_number,
    sample_rate, noise_multiplier, steps, delta, accountant, recorded_at
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
_SELECT = """
SELECT dataset_id, study_id, run_id, round_number,
       sample_rate, noise_multiplier, steps, delta, accountant, recorded_at
FROM privacy_spend
WHERE dataset_id = ?
  AND (? IS NULL OR study_id = ?)
  AND (? IS NULL OR run_id = ?)
ORDER BY id
"""


class BudgetExceededError(Exception):
    """The round would take a dataset past its lifetime ε cap (or the ledger could not tell)."""

    def __init__(
        self, message: str, *, dataset_id: str, spent: float, projected: float, cap: float
    ) -> None:
        super().__init__(message)
        self.dataset_id = dataset_id
        self.spent = spent
        self.projected = projected
        self.cap = cap


class LedgerUnreadableError(BudgetExceededError):
    """The ledger could not be read, so the spend is unknown and the round is refused."""


class _CorruptEntryError(Exception):
    """A stored row does not hold a valid privacy step."""


@dataclass(frozen=True)
class LedgerEntry:
    dataset_id: str
    study_id: str
    run_id: str
    round_number: int
    step: PrivacyStep
    recorded_at: datetime


def _require_identifier(name: str, value: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")


def _require_entry_fields(
    *, dataset_id: str, study_id: str, run_id: str, round_number: int
) -> None:
    for name, value in (("dataset_id", dataset_id), ("study_id", study_id), ("run_id", run_id)):
        _require_identifier(name, value)
    if isinstance(round_number, bool) or not isinstance(round_number, int) or round_number < 0:
        raise ValueError(f"round_number must be a non-negative integer, got {round_number!r}")


def _require_cap(cap: float) -> None:
    if isinstance(cap, bool) or not isinstance(cap, int | float) or not math.isfinite(cap):
        raise ValueError(f"cap must be a finite number, got {cap!r}")
    if cap <= 0:
        raise ValueError(f"cap must be positive, got {cap!r}")


def _entry_from_row(row: tuple[object, ...]) -> LedgerEntry:
    (
        dataset_id,
        study_id,
        run_id,
        round_number,
        sample_rate,
        noise_multiplier,
        steps,
        delta,
        accountant,
        recorded_at,
    ) = row
    # PrivacyStep validates every field again: a tampered or corrupt row fails here, not silently.
    return LedgerEntry(
        dataset_id=str(dataset_id),
        study_id=str(study_id),
        run_id=str(run_id),
        round_number=int(str(round_number)),
        step=PrivacyStep(
            sample_rate=float(str(sample_rate)),
            noise_multiplier=float(str(noise_multiplier)),
            steps=int(str(steps)),
            delta=float(str(delta)),
            accountant=Accountant(str(accountant)),
        ),
        recorded_at=datetime.fromisoformat(str(recorded_at)),
    )


class PrivacyLedger:
    """ε spent per dataset across all rounds, runs and studies of this node, in SQLite at `path`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Only a new ledger gets a schema. A ledger that has one is opened without writing: every
        # round opens it, and a ledger that lost its table must stay unreadable, failing closed,
        # rather than start again empty.
        if self._schema_version() != _SCHEMA_VERSION:
            self._create_schema()

    def _schema_version(self) -> int:
        with self._connection() as connection:
            (version,) = connection.execute("PRAGMA user_version").fetchone()
        return int(version)

    def _create_schema(self) -> None:
        with self._write_transaction() as connection:
            (version,) = connection.execute("PRAGMA user_version").fetchone()
            if version not in (0, _SCHEMA_VERSION):
                raise RuntimeError(
                    f"privacy ledger {self.path} has schema version {version}; this code reads "
                    f"version {_SCHEMA_VERSION}: upgrade the node software, keep the ledger"
                )
            if version == 0:  # another process may have created it since it was read
                connection.execute(_CREATE_TABLE)
                connection.execute(_CREATE_INDEX)
                connection.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        # isolation_level=None: transactions are opened explicitly, never implicitly by sqlite3.
        connection = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_SECONDS, isolation_level=None)
        try:
            # WAL lets readers proceed while another process writes; FULL sync makes a recorded
            # spend survive a power cut (WAL's usual NORMAL may lose the last transactions).
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = FULL")
            yield connection
        finally:
            connection.close()

    @contextmanager
    def _write_transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connection() as connection:
            # IMMEDIATE takes the write lock up front, so a check-then-insert cannot interleave
            # with another process doing the same.
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    @staticmethod
    def _select(
        connection: sqlite3.Connection,
        *,
        dataset_id: str,
        study_id: str | None,
        run_id: str | None,
    ) -> list[LedgerEntry]:
        rows = connection.execute(
            _SELECT, (dataset_id, study_id, study_id, run_id, run_id)
        ).fetchall()
        return [_entry_from_row(tuple(row)) for row in rows]

    @staticmethod
    def _insert(
        connection: sqlite3.Connection,
        *,
        dataset_id: str,
        study_id: str,
        run_id: str,
        round_number: int,
        step: PrivacyStep,
    ) -> LedgerEntry:
        _require_entry_fields(
            dataset_id=dataset_id, study_id=study_id, run_id=run_id, round_number=round_number
        )
        entry = LedgerEntry(
            dataset_id=dataset_id,
            study_id=study_id,
            run_id=run_id,
            round_number=round_number,
            step=step,
            recorded_at=datetime.now(UTC),
        )
        connection.execute(
            _INSERT,
            (
                entry.dataset_id,
                entry.study_id,
                entry.run_id,
                entry.round_number,
                step.sample_rate,
                step.noise_multiplier,
                step.steps,
                step.delta,
                step.accountant.value,
                entry.recorded_at.isoformat(),
            ),
        )
        return entry

    def record(
        self,
        *,
        dataset_id: str,
        study_id: str,
        run_id: str,
        round_number: int,
        step: PrivacyStep,
    ) -> LedgerEntry:
        """Appends what a round spent. Every call counts: recording a retried round twice
        over-counts, which errs on the side of privacy."""
        with self._write_transaction() as connection:
            return self._insert(
                connection,
                dataset_id=dataset_id,
                study_id=study_id,
                run_id=run_id,
                round_number=round_number,
                step=step,
            )

    def entries(
        self, *, dataset_id: str, study_id: str | None = None, run_id: str | None = None
    ) -> list[LedgerEntry]:
        """Entries of one dataset in the order recorded, optionally of one study and/or run."""
        with self._connection() as connection:
            return self._select(connection, dataset_id=dataset_id, study_id=study_id, run_id=run_id)

    def epsilon(
        self,
        *,
        dataset_id: str,
        delta: float,
        accountant: Accountant,
        study_id: str | None = None,
        run_id: str | None = None,
    ) -> float:
        """ε at `delta` of the dataset's recorded history (or of one study's / run's part of it)."""
        history = self.entries(dataset_id=dataset_id, study_id=study_id, run_id=run_id)
        return epsilon_of([entry.step for entry in history], delta=delta, accountant=accountant)

    def ensure_affordable(
        self,
        *,
        dataset_id: str,
        planned: PrivacyStep,
        cap: float,
        delta: float,
        accountant: Accountant,
        context: str,
    ) -> float:
        """Returns the lifetime ε the dataset would reach with `planned`; raises
        `BudgetExceededError` if that exceeds `cap` or the ledger cannot be read.

        A check only: another process may spend between this and `record`. `charge` checks and
        records in one transaction.
        """
        _require_cap(cap)
        try:
            with self._connection() as connection:
                history = self._lifetime_history(connection, dataset_id=dataset_id)
        except (sqlite3.Error, OSError, _CorruptEntryError) as error:
            raise self._unreadable(dataset_id=dataset_id, cap=cap, context=context) from error
        return self._refuse_unless_affordable(
            history=history,
            planned=planned,
            dataset_id=dataset_id,
            cap=cap,
            delta=delta,
            accountant=accountant,
            context=context,
        )

    def charge(
        self,
        *,
        dataset_id: str,
        study_id: str,
        run_id: str,
        round_number: int,
        step: PrivacyStep,
        cap: float,
        delta: float,
        accountant: Accountant,
        context: str,
    ) -> LedgerEntry:
        """Checks `step` against the lifetime `cap` and records it, atomically across processes.

        Charge the planned step before training: nothing leaves the node unrecorded, and two
        concurrent rounds cannot both pass the check and then together overshoot the cap.
        """
        _require_cap(cap)
        _require_entry_fields(
            dataset_id=dataset_id, study_id=study_id, run_id=run_id, round_number=round_number
        )
        try:
            with self._write_transaction() as connection:
                history = self._lifetime_history(connection, dataset_id=dataset_id)
                self._refuse_unless_affordable(
                    history=history,
                    planned=step,
                    dataset_id=dataset_id,
                    cap=cap,
                    delta=delta,
                    accountant=accountant,
                    context=context,
                )
                return self._insert(
                    connection,
                    dataset_id=dataset_id,
                    study_id=study_id,
                    run_id=run_id,
                    round_number=round_number,
                    step=step,
                )
        except (sqlite3.Error, OSError, _CorruptEntryError) as error:
            raise self._unreadable(dataset_id=dataset_id, cap=cap, context=context) from error

    def _lifetime_history(
        self, connection: sqlite3.Connection, *, dataset_id: str
    ) -> list[PrivacyStep]:
        try:
            history = self._select(connection, dataset_id=dataset_id, study_id=None, run_id=None)
        except ValueError as error:
            raise _CorruptEntryError(str(error)) from error
        return [entry.step for entry in history]

    def _unreadable(self, *, dataset_id: str, cap: float, context: str) -> LedgerUnreadableError:
        return LedgerUnreadableError(
            f"{context} refused: the privacy ledger {self.path} could not be read or written, so "
            f"the ε spent by dataset '{dataset_id}' is unknown (see the chained error)",
            dataset_id=dataset_id,
            spent=math.inf,
            projected=math.inf,
            cap=cap,
        )

    @staticmethod
    def _refuse_unless_affordable(
        *,
        history: list[PrivacyStep],
        planned: PrivacyStep,
        dataset_id: str,
        cap: float,
        delta: float,
        accountant: Accountant,
        context: str,
    ) -> float:
        projected = epsilon_of([*history, planned], delta=delta, accountant=accountant)
        # Written so that a NaN ε refuses too.
        if projected <= cap:
            return projected
        spent = epsilon_of(history, delta=delta, accountant=accountant)
        raise BudgetExceededError(
            f"{context} refused: dataset '{dataset_id}' has spent ε={spent:.2f} of its lifetime "
            f"cap {cap:.2f} (δ={delta:g}, {Accountant(accountant).value}); this round would bring "
            f"it to {projected:.2f}",
            dataset_id=dataset_id,
            spent=spent,
            projected=projected,
            cap=cap,
        )
