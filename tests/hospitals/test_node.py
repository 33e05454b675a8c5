"""The node config: one TOML file for the SuperNode and the CLI, and the node's portal token."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

from hospitals.node import (
    NODE_TEMPLATE,
    TOKEN_VARIABLE,
    NodeConfigError,
    NodeSettings,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_template_documents_every_key_and_loads(tmp_path):
    node = NodeSettings.from_file(write(tmp_path, NODE_TEMPLATE))

    assert set(tomllib.loads(NODE_TEMPLATE)) == {
        "hospital",
        "data-path",
        "state-dir",
        "policy-path",
        "dataset-id",
        "portal-url",
        "device",
        "cpu-threads",
    }
    assert node.portal_url == "https://cohort.example.org"
    assert node.device == "cpu"
    assert node.cpu_threads == 4
    assert node.outbound_log_path == Path("/srv/cohort/state/outbound.jsonl")


def test_the_file_reads_as_flower_reads_it(tmp_path):
    settings = NodeSettings(
        hospital="hospital-a",
        data_path=tmp_path / "data 'a'.csv",
        state_dir=tmp_path / "state",
        policy_path=tmp_path / "policy.toml",
        dataset_id="a/breast",
        portal_url="http://127.0.0.1:8000",
        device="cuda:1",
        cpu_threads=2,
    )
    path = write(tmp_path, settings.to_toml())

    assert NodeSettings.from_file(path) == settings
    # flower-supernode --node-config node.toml reads the same file into context.node_config.
    assert NodeSettings.from_node_config(parse_config_args([str(path)])) == settings


def test_portal_url_is_optional(tmp_path):
    node = NodeSettings.from_file(
        write(tmp_path, 'hospital = "h"\ndata-path = "d.csv"\nstate-dir = "s"\npolicy-path = "p"\n')
    )

    assert node.portal_url is None and node.dataset_id == "d" and node.device == "cpu"
    assert node.cpu_threads is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('hospital = "h"\n', "lacks data-path, state-dir, policy-path"),
        ('hospital = "h"\ndata_path = "x"\n', "unknown key 'data_path'"),
        ("hospital = 3\n", "'hospital' must be a string"),
        ("hospital = \n", "not valid TOML"),
        (
            'hospital = "h"\ndata-path = "d"\nstate-dir = "s"\npolicy-path = "p"\n'
            'portal-url = "ftp://x"\n',
            "portal-url must be an https://",
        ),
        (
            'hospital = "h"\ndata-path = "d"\nstate-dir = "s"\npolicy-path = "p"\ndevice = "gpu"\n',
            'device must be "cpu", "cuda" or "cuda:N"',
        ),
        *(
            (
                'hospital = "h"\ndata-path = "d"\nstate-dir = "s"\npolicy-path = "p"\n'
                f'cpu-threads = "{threads}"\n',
                "cpu-threads must be a whole number of at least 1",
            )
            for threads in ("0", "-2", "1.5", "all")
        ),
    ],
)
def test_a_bad_node_file_names_the_problem(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(NodeConfigError, match=expected) as raised:
        NodeSettings.from_file(path)
    assert str(path) in str(raised.value)


@pytest.mark.parametrize(("value", "threads"), [(3, 3), ("2", 2), ("", None)])
def test_cpu_threads_come_as_flower_parses_them(tmp_path, value, threads):
    config = {"hospital": "h", "data-path": "d", "state-dir": "s", "policy-path": "p"}
    node = NodeSettings.from_node_config({**config, "cpu-threads": value})
    assert node.cpu_threads == threads


def test_a_missing_node_file_says_where_it_looked(tmp_path):
    with pytest.raises(NodeConfigError, match="not found"):
        NodeSettings.from_file(tmp_path / "absent.toml")


def test_the_token_comes_from_the_environment_first_then_the_state_dir(tmp_path, monkeypatch):
    node = NodeSettings(
        hospital="h",
        data_path=tmp_path / "d.csv",
        state_dir=tmp_path / "state",
        policy_path=tmp_path / "p.toml",
        dataset_id="d",
    )
    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
    with pytest.raises(NodeConfigError, match=f"set {TOKEN_VARIABLE} or write the token"):
        node.portal_token()

    node.state_dir.mkdir()
    node.portal_token_path.write_text("from-file\n")
    assert node.portal_token() == "from-file"

    monkeypatch.setenv(TOKEN_VARIABLE, "from-env")
    assert node.portal_token() == "from-env"
