"""`cohort-hospital`: what hospital IT runs at a node."""

from __future__ import annotations

from pathlib import Path

import pytest

from demo.setup import STUDY_ID
from hospitals.cli import main
from hospitals.consent import create_or_load_secret, load_secret, pseudonym
from hospitals.keys import study_key_path
from hospitals.node import TOKEN_VARIABLE, NodeSettings
from hospitals.participation import RoundRequest, train_round
from hospitals.protocol import canonical_json
from tests.hospitals.fake_portal import TOKEN, FakePortal, running
from tests.hospitals.test_consent_rounds import consented_node, patient_ids
from tests.hospitals.test_participation import node_of


def node_file(node: NodeSettings, tmp_path: Path) -> str:
    path = tmp_path / "node.toml"
    path.write_text(node.to_toml())
    return str(path)


def test_check_reports_a_valid_file_and_its_split(make_consortium, tmp_path, capsys):
    consortium = make_consortium(rounds=1)
    protocol = tmp_path / "protocol.json"
    protocol.write_text(canonical_json(consortium.protocol.document))

    assert (
        main(["check", "--protocol", str(protocol), "--data", str(consortium.files.hospitals[0])])
        == 0
    )

    out = capsys.readouterr().out
    assert "226 rows valid for study 'breast-cancer-demo'" in out
    assert "training rows" in out and "held-out rows" in out


def test_check_explains_a_bad_file_and_exits_nonzero(make_consortium, tmp_path, capsys):
    consortium = make_consortium(rounds=1)
    protocol = tmp_path / "protocol.json"
    protocol.write_text(canonical_json(consortium.protocol.document))
    bad = tmp_path / "bad.csv"
    bad.write_text("patient_id,malignant\nX-1,1\n")

    assert main(["check", "--protocol", str(protocol), "--data", str(bad)]) == 1

    assert "mean_radius" in capsys.readouterr().err


def test_ledger_lists_rounds_and_the_lifetime_epsilon(make_consortium, tmp_path, capsys):
    consortium = make_consortium(rounds=2)
    node = node_of(consortium)
    train_round(
        node,
        RoundRequest(run_id="9", round_number=1, protocol=consortium.protocol, global_state=None),
    )

    assert main(["ledger", "--node", node_file(node, tmp_path)]) == 0

    out = capsys.readouterr().out
    assert "study breast-cancer-demo run 9 round 1" in out
    assert "1 round(s), lifetime ε=" in out and "of 10" in out and "rdp-balle2020" in out


def test_a_bad_node_file_is_explained(tmp_path, capsys):
    path = tmp_path / "node.toml"
    path.write_text('hospital = "h"\n')

    assert main(["ledger", "--node", str(path)]) == 1

    assert "lacks data-path" in capsys.readouterr().err


def test_policy_prints_a_template_that_loads(tmp_path, capsys):
    assert main(["policy"]) == 0
    template = tmp_path / "policy.toml"
    template.write_text(capsys.readouterr().out)

    assert main(["policy", "--check", str(template)]) == 0


def test_node_prints_a_template_that_loads(tmp_path, capsys):
    assert main(["node"]) == 0
    template = tmp_path / "node.toml"
    template.write_text(capsys.readouterr().out)

    assert main(["node", "--check", str(template)]) == 0
    assert "portal_url='https://cohort.example.org'" in capsys.readouterr().out


@pytest.fixture
def portal_node(make_consortium, tmp_path, monkeypatch):
    """A node asking for consent, its node.toml, and a fake portal it reaches with its token."""
    consortium = make_consortium(rounds=1)
    monkeypatch.setenv(TOKEN_VARIABLE, TOKEN)
    listed = {
        "slug": STUDY_ID,
        "protocol": dict(consortium.protocol.document),
        "protocol_sha256": consortium.protocol.approval_sha256,
    }
    with running(FakePortal(institution="hospital-a", protocols=[listed])) as portal:
        node = consented_node(consortium, tmp_path / "node", portal_url=portal.url, secret=False)
        yield consortium, node, node_file(node, tmp_path), portal


def test_consent_import_records_pseudonyms_and_says_to_back_up_the_secret(
    portal_node, tmp_path, capsys
):
    _, node, config, portal = portal_node
    ids = patient_ids(node.data_path)
    export = tmp_path / "consent.csv"
    export.write_text(
        "patient_id,status,date,form_version\n"
        + "".join(f"{pid},granted,2025-02-01,1\n" for pid in ids[:200])
        + "".join(f"{pid},withdrawn,2025-03-01,\n" for pid in ids[200:])
    )
    command = ["consent", "import", str(export), "--study", STUDY_ID, "--node", config]

    assert main(command) == 0
    first = capsys.readouterr().out
    assert main(command) == 0
    again = capsys.readouterr().out

    assert "back it up" in first and str(node.consent_secret_path) in first
    assert "226 decisions (200 granted, 26 withdrawn)" in first
    assert "226 recorded, 0 unchanged" in first
    assert "0 recorded, 226 unchanged" in again and "back it up" not in again
    assert len(portal.snapshot(STUDY_ID)["granted"]) == 200


def test_a_bad_consent_export_is_listed_and_nothing_is_sent(portal_node, tmp_path, capsys):
    _, node, config, portal = portal_node
    export = tmp_path / "consent.csv"
    export.write_text(
        "patient_id,status,date,form_version\nPAT-1,granted,2025-02-01,3\nPAT-1,granted,,1\n"
    )

    assert main(["consent", "import", str(export), "--study", STUDY_ID, "--node", config]) == 1

    err = capsys.readouterr().err
    assert "line 2, column 'form_version': unknown form version 3" in err
    assert "line 3, column 'patient_id': the same patient as line 2" in err
    assert "line 3, column 'date'" in err
    assert "PAT-1" not in err
    assert [method for method, _, _ in portal.requests] == ["GET"]  # the forms, nothing else


def test_consent_withdraw_sends_only_the_pseudonym(portal_node, capsys):
    _, node, config, portal = portal_node
    secret, _ = create_or_load_secret(node)

    assert main(["consent", "withdraw", "A-0007", "--study", STUDY_ID, "--node", config]) == 0

    out = capsys.readouterr().out
    assert "withdrawal of patient A-0007" in out and pseudonym("A-0007", secret)[:12] in out
    ((_, _, body),) = [r for r in portal.requests if r[0] == "POST"]
    assert body["records"][0]["pseudonym"] == pseudonym("A-0007", load_secret(node))
    assert "A-0007" not in str(portal.requests)


def test_heartbeat_reports_ledger_and_readiness(portal_node, capsys):
    _, node, config, portal = portal_node

    assert main(["heartbeat", "--node", config]) == 0

    out = capsys.readouterr().out
    assert "heartbeat sent (online)" in out
    assert f"ledger: dataset '{node.dataset_id}'" in out
    assert f"{STUDY_ID}: protocol" in out
    assert "blocked: consent-unavailable" in out  # no consent secret yet
    assert portal.readiness[STUDY_ID]["blockers"][0]["code"] == "consent-unavailable"


def test_heartbeat_without_a_portal_url_explains(make_consortium, tmp_path, capsys):
    consortium = make_consortium(rounds=1)

    assert main(["heartbeat", "--node", node_file(node_of(consortium), tmp_path)]) == 1

    assert "no portal-url" in capsys.readouterr().err


def test_keys_create_pins_the_context_and_keeps_the_key(portal_node, capsys):
    _, node, config, portal = portal_node
    study_key_path(node.keys_dir, "new-study").unlink(missing_ok=True)

    assert main(["keys-create", "--study", "new-study", "--node", config]) == 0

    assert study_key_path(node.keys_dir, "new-study").exists()
    assert "new-study" in portal.he_contexts
    assert main(["keys-create", "--study", "new-study", "--node", config]) == 1
    assert "already holds a key" in capsys.readouterr().err
