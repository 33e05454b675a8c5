"""`cohort-hospital`: what hospital IT runs at a node."""

from __future__ import annotations

from hospitals.cli import main
from hospitals.participation import RoundRequest, train_round
from hospitals.protocol import canonical_json
from tests.hospitals.test_participation import node_of


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


def test_ledger_lists_rounds_and_the_lifetime_epsilon(make_consortium, capsys):
    consortium = make_consortium(rounds=2)
    node = node_of(consortium)
    train_round(
        node,
        RoundRequest(run_id="9", round_number=1, protocol=consortium.protocol, global_state=None),
    )

    args = [
        "ledger",
        "--state-dir",
        str(node.state_dir),
        "--dataset",
        node.dataset_id,
        "--policy",
        str(node.policy_path),
    ]
    assert main(args) == 0

    out = capsys.readouterr().out
    assert "study breast-cancer-demo run 9 round 1" in out
    assert "1 round(s), lifetime ε=" in out and "of 10" in out


def test_policy_prints_a_template_that_loads(tmp_path, capsys):
    assert main(["policy"]) == 0
    template = tmp_path / "policy.toml"
    template.write_text(capsys.readouterr().out)

    assert main(["policy", "--check", str(template)]) == 0
