"""Consent at the node: the secret, pseudonyms, the consent export, the portal's snapshot."""

from __future__ import annotations

import hashlib
import json
import stat
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from hospitals.consent import (
    MAX_PROBLEMS_SHOWN,
    ConsentError,
    ConsentExportError,
    ConsentSnapshot,
    MissingConsentSecretError,
    SnapshotError,
    create_or_load_secret,
    import_consent_export,
    load_secret,
    pseudonym,
    read_consent_export,
    snapshot_sha256,
    withdraw_consent,
)
from hospitals.node import NodeSettings
from hospitals.portal_client import PortalError

TODAY = date(2026, 3, 1)
HEADER = "patient_id,status,date,form_version\n"


def node_in(tmp_path: Path) -> NodeSettings:
    return NodeSettings(
        hospital="hospital-a",
        data_path=tmp_path / "data.csv",
        state_dir=tmp_path / "state",
        policy_path=tmp_path / "policy.toml",
        dataset_id="a",
    )


def export(tmp_path: Path, body: str, *, header: str = HEADER) -> Path:
    path = tmp_path / "consent.csv"
    path.write_text(header + body, encoding="utf-8")
    return path


class FakeConsentPortal:
    """Records calls; answers like the portal's consent API."""

    def __init__(self, versions: list[int] | None = None, *, requires_current: bool = False):
        self.versions = [1, 2] if versions is None else versions
        self.requires_current = requires_current
        self.calls: list[tuple[str, Any]] = []
        self.refuse_with: PortalError | None = None

    def consent_forms(self, *, study_slug: str) -> dict[str, Any]:
        self.calls.append(("forms", study_slug))
        return {
            "study": study_slug,
            "current_version": max(self.versions, default=None),
            "requires_current": self.requires_current,
            "versions": self.versions,
        }

    def record_consent(self, *, study_slug: str, records: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls.append(("record", records))
        if self.refuse_with is not None:
            raise self.refuse_with
        return {"batch": 1, "created": len(records), "unchanged": 0}

    def consent_snapshot(self, *, study_slug: str) -> dict[str, Any]:
        raise AssertionError("not used here")

    @property
    def uploads(self) -> list[Any]:
        return [payload for name, payload in self.calls if name == "record"]


# --- the secret and pseudonyms ---------------------------------------------------------------


def test_the_secret_is_32_random_bytes_readable_by_the_node_only(tmp_path):
    node = node_in(tmp_path)

    secret, created = create_or_load_secret(node)
    again, created_again = create_or_load_secret(node)

    assert created and not created_again
    assert secret == again == load_secret(node) and len(secret) == 32
    assert stat.S_IMODE(node.consent_secret_path.stat().st_mode) == 0o600
    assert create_or_load_secret(node_in(tmp_path / "other"))[0] != secret


def test_a_missing_secret_says_to_restore_it(tmp_path):
    with pytest.raises(MissingConsentSecretError, match="back it up"):
        load_secret(node_in(tmp_path))


def test_a_damaged_secret_is_refused(tmp_path):
    node = node_in(tmp_path)
    node.state_dir.mkdir()
    node.consent_secret_path.write_bytes(b"short")

    with pytest.raises(MissingConsentSecretError, match="damaged"):
        load_secret(node)


def test_pseudonyms_are_deterministic_per_secret_and_differ_across_secrets():
    one, two = bytes(range(32)), bytes(range(1, 33))

    assert pseudonym("P-1", one) == pseudonym("P-1", one)
    assert pseudonym("P-1", one) != pseudonym("P-2", one)
    assert pseudonym("P-1", one) != pseudonym("P-1", two)
    assert (
        len(pseudonym("P-1", one)) == 64 and pseudonym("P-1", one) == pseudonym("P-1", one).lower()
    )
    with pytest.raises(ValueError, match="32 bytes"):
        pseudonym("P-1", b"too short")


# --- reading the export ----------------------------------------------------------------------


def test_a_valid_export_reads_every_decision(tmp_path):
    path = export(
        tmp_path,
        "P-1,granted,2025-01-06,1\n\nP-2, withdrawn ,2025-03-01,\nP-3,Granted,2026-03-01,2\n",
    )

    decisions = read_consent_export(path, versions=[1, 2], today=TODAY)

    assert [(d.status, d.decided_at, d.form_version, d.line) for d in decisions] == [
        ("granted", date(2025, 1, 6), 1, 2),
        ("withdrawn", date(2025, 3, 1), None, 4),
        ("granted", date(2026, 3, 1), 2, 5),
    ]
    assert "P-1" not in repr(decisions[0])


def test_every_problem_is_listed_by_line_and_no_patient_id_is_echoed(tmp_path):
    path = export(
        tmp_path,
        "SECRET-1,granted,2025-01-06,1\n"  # line 2: fine
        "SECRET-2,maybe,2025-01-06,1\n"  # line 3: status
        "SECRET-3,granted,06/01/2025,1\n"  # line 4: date format
        "SECRET-4,granted,2026-03-02,1\n"  # line 5: future
        "SECRET-5,granted,2025-01-06,\n"  # line 6: granted needs a form
        "SECRET-6,granted,2025-01-06,4\n"  # line 7: unknown form version
        "SECRET-7,withdrawn,2025-01-06,x\n"  # line 8: not a number
        "SECRET-1,withdrawn,2025-02-06,\n"  # line 9: duplicate of line 2
        "SECRET-8,granted,2025-01-06\n"  # line 10: a field short
        ",granted,2025-01-06,1\n"  # line 11: empty id
        "2025-01-06,SECRET-9,granted,1\n",  # line 12: shifted columns
    )

    with pytest.raises(ConsentExportError) as raised:
        read_consent_export(path, versions=[1, 2], today=TODAY)

    problems = {(p.line, p.column): p.problem for p in raised.value.problems}
    assert set(problems) == {
        (3, "status"),
        (4, "date"),
        (5, "date"),
        (6, "form_version"),
        (7, "form_version"),
        (8, "form_version"),
        (9, "patient_id"),
        (10, None),
        (11, "patient_id"),
        (12, "status"),
        (12, "date"),
    }
    assert "in the future" in problems[(5, "date")]
    assert problems[(7, "form_version")] == "unknown form version 4; the study has 1, 2"
    assert "line 2" in problems[(9, "patient_id")]
    assert "has 3 field(s)" in problems[(10, None)]
    message = str(raised.value)
    assert "11 problem(s)" in message and "line 7, column 'form_version'" in message
    assert "SECRET" not in message


def test_a_long_list_of_problems_is_capped(tmp_path):
    path = export(tmp_path, "".join(f"P-{n},granted,2025-01-06,9\n" for n in range(30)))

    with pytest.raises(ConsentExportError) as raised:
        read_consent_export(path, versions=[1], today=TODAY)

    assert len(raised.value.problems) == 30
    message = str(raised.value)
    assert message.count("unknown form version 9") == MAX_PROBLEMS_SHOWN
    assert f"and {30 - MAX_PROBLEMS_SHOWN} more" in message


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("patient_id,status,date\n", "missing column(s) form_version"),
        ("patient_id,status,date,form_version,name\n", "unknown column(s) 'name'"),
        ("patient,status,date,form_version\n", "missing column(s) patient_id"),
        ("patient_id,status,date,date,form_version\n", "repeated column(s) date"),
    ],
)
def test_the_header_must_be_exactly_the_four_columns(tmp_path, header, expected):
    path = export(tmp_path, "P-1,granted,2025-01-06,1\n", header=header)

    with pytest.raises(ConsentExportError, match=r"line 1: .*") as raised:
        read_consent_export(path, versions=[1], today=TODAY)

    assert expected in str(raised.value)
    assert "patient_id,status,date,form_version" in str(raised.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", "the file is empty"), (HEADER, "no rows"), (HEADER + "\n\n", "no rows")],
)
def test_an_export_without_rows_is_refused(tmp_path, text, expected):
    path = tmp_path / "consent.csv"
    path.write_text(text)

    with pytest.raises(ConsentExportError, match=expected):
        read_consent_export(path, versions=[1], today=TODAY)


def test_today_defaults_to_the_hospitals_calendar(tmp_path):
    path = export(tmp_path, f"P-1,granted,{datetime.now(UTC).astimezone().date()},1\n")

    assert len(read_consent_export(path, versions=[1])) == 1


# --- import and withdraw ---------------------------------------------------------------------


def test_an_invalid_export_uploads_nothing_and_creates_no_secret(tmp_path):
    node = node_in(tmp_path)
    portal = FakeConsentPortal(versions=[1])
    path = export(tmp_path, "P-1,granted,2025-01-06,1\nP-2,granted,2025-01-06,2\n")

    with pytest.raises(ConsentExportError, match="line 3, column 'form_version'"):
        import_consent_export(node, study="s", path=path, portal=portal, today=TODAY)

    assert portal.uploads == []
    assert not node.consent_secret_path.exists()


def test_an_import_uploads_pseudonyms_only(tmp_path):
    node = node_in(tmp_path)
    portal = FakeConsentPortal(versions=[1, 2], requires_current=True)
    path = export(
        tmp_path,
        "PAT-1,granted,2025-01-06,1\nPAT-2,withdrawn,2025-02-06,\nPAT-3,granted,2025-01-06,2\n",
    )

    result = import_consent_export(node, study="s", path=path, portal=portal, today=TODAY)

    (records,) = portal.uploads
    secret = load_secret(node)
    assert records == [
        {
            "pseudonym": pseudonym("PAT-1", secret),
            "status": "granted",
            "decided_at": "2025-01-06",
            "form_version": 1,
        },
        {
            "pseudonym": pseudonym("PAT-2", secret),
            "status": "withdrawn",
            "decided_at": "2025-02-06",
            "form_version": None,
        },
        {
            "pseudonym": pseudonym("PAT-3", secret),
            "status": "granted",
            "decided_at": "2025-01-06",
            "form_version": 2,
        },
    ]
    assert "PAT-" not in repr(records)
    assert (result.rows, result.granted, result.withdrawn, result.outdated) == (3, 2, 1, 1)
    assert result.created == 3 and result.secret_created


def test_the_portals_per_record_problems_come_back_as_lines(tmp_path):
    node = node_in(tmp_path)
    portal = FakeConsentPortal(versions=[1])
    portal.refuse_with = PortalError(
        "400 invalid", status=400, fields={"records[1].decided_at": ["before the study opened"]}
    )
    path = export(tmp_path, "P-1,granted,2025-01-06,1\nP-2,granted,2025-01-06,1\n")

    with pytest.raises(ConsentExportError, match="line 3, column 'date': portal: before the"):
        import_consent_export(node, study="s", path=path, portal=portal, today=TODAY)


def test_a_withdrawal_is_recorded_now_under_the_pseudonym(tmp_path):
    node = node_in(tmp_path)
    secret, _ = create_or_load_secret(node)
    portal = FakeConsentPortal()
    at = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)

    result = withdraw_consent(node, study="s", patient_id=" PAT-7 ", portal=portal, at=at)

    assert portal.uploads == [
        [
            {
                "pseudonym": pseudonym("PAT-7", secret),
                "status": "withdrawn",
                "decided_at": "2026-03-01T09:30:00+00:00",
                "form_version": None,
            }
        ]
    ]
    assert result.pseudonym == pseudonym("PAT-7", secret)


def test_a_withdrawal_without_the_secret_is_refused(tmp_path):
    portal = FakeConsentPortal()
    with pytest.raises(MissingConsentSecretError):
        withdraw_consent(node_in(tmp_path), study="s", patient_id="PAT-7", portal=portal)
    with pytest.raises(ConsentError, match="empty"):
        withdraw_consent(node_in(tmp_path), study="s", patient_id="  ", portal=portal)
    assert portal.uploads == []


# --- the snapshot ----------------------------------------------------------------------------


def snapshot_document(**changes: Any) -> dict[str, Any]:
    granted = sorted(pseudonym(f"P-{n}", bytes(32)) for n in range(3))
    document: dict[str, Any] = {
        "study": "s",
        "institution": "hospital-a",
        "required_form_version": 2,
        "granted": granted,
        "taken_at": "2026-03-01T10:00:00+00:00",
    }
    document["sha256"] = snapshot_sha256(
        study="s", institution="hospital-a", required_form_version=2, granted=granted
    )
    document.update(changes)
    return document


def test_a_snapshot_parses_and_keeps_its_hash():
    document = snapshot_document()

    snapshot = ConsentSnapshot.from_portal(document, study="s")

    assert snapshot.granted == frozenset(document["granted"])
    assert snapshot.sha256 == document["sha256"]
    assert snapshot.required_form_version == 2


def test_the_snapshot_hash_covers_exactly_the_four_keys():
    document = snapshot_document()
    hashed = {k: document[k] for k in ("study", "institution", "required_form_version", "granted")}
    canonical = json.dumps(hashed, sort_keys=True, separators=(",", ":"))

    assert document["sha256"] == hashlib.sha256(canonical.encode()).hexdigest()


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"granted": []}, "does not match its sha256"),
        ({"required_form_version": 1}, "does not match its sha256"),
        ({"institution": "hospital-b"}, "does not match its sha256"),
        ({"study": "other"}, "names another study"),
        ({"granted": "all"}, "'granted' that is not a list"),
        ({"granted": ["P-1"]}, "granted\\[0\\] that is not a 64-character hex pseudonym"),
        ({"granted": ["b" * 64, "a" * 64]}, "granted\\[1\\] out of order"),
        ({"granted": ["a" * 64, "a" * 64]}, "granted\\[1\\] out of order or repeated"),
        ({"required_form_version": True}, "required_form_version"),
        ({"sha256": "nope"}, "no valid sha256"),
        ({"institution": ""}, "no institution"),
    ],
)
def test_a_bad_snapshot_is_refused_with_a_clear_reason(changes, expected):
    with pytest.raises(SnapshotError, match=expected):
        ConsentSnapshot.from_portal(snapshot_document(**changes), study="s")


def test_a_snapshot_missing_keys_names_them():
    document = snapshot_document()
    del document["granted"], document["sha256"]

    with pytest.raises(SnapshotError, match="lacks granted, sha256"):
        ConsentSnapshot.from_portal(document, study="s")
    with pytest.raises(SnapshotError, match="not a JSON object"):
        ConsentSnapshot.from_portal([], study="s")
