"""`cohort-launchers`: several SuperNodes' launchers forked from one process that preloaded once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hospitals.launcher import parse_args
from hospitals.launcher_host import HostedLauncher, LaunchersFileError, main, read_launchers

# The host's real code with a stand-in for serve_tasks that needs no SuperNode: it announces
# itself on stdout, writes its ready file as a launcher does, and serves until that file is removed
# (its SuperNode gone: exit 0) or a stop signal comes (exit 143, as _exit_on_signal has it).
HOST_SCRIPT = """
import os, signal, sys, time
from pathlib import Path
from hospitals.launcher_host import host, read_launchers

def serve(settings):
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    print(f"serving {settings.runtime_api_address} in pid {os.getpid()}", flush=True)
    settings.ready_file.write_text(str(os.getpid()))
    while settings.ready_file.exists():
        time.sleep(0.02)

launchers = read_launchers(Path(sys.argv[1]))
sys.exit(host(launchers, modules=("json",), serve=serve, pids_file=Path(sys.argv[2])))
"""


def write_launchers(path: Path, entries: Any) -> Path:
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path


def entry(tmp_path: Path, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "log_file": str(tmp_path / "logs" / f"launcher-{name}.log"),
        "args": [
            "--runtime-api-address",
            f"{name}:9094",
            "--insecure",
            "--ready-file",
            str(tmp_path / f"{name}.ready"),
        ],
    }


def wait_for(condition: Any, *, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_read_launchers_gives_each_entry_a_launchers_own_settings(tmp_path):
    path = write_launchers(tmp_path / "launchers.json", [entry(tmp_path, n) for n in ("a", "b")])

    assert read_launchers(path) == [
        HostedLauncher(
            name=name,
            log_file=tmp_path / "logs" / f"launcher-{name}.log",
            settings=parse_args(entry(tmp_path, name)["args"]),
        )
        for name in ("a", "b")
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "cannot read the launchers file"),
        ("[]", "must hold a non-empty JSON list of launchers"),
        ('{"name": "a"}', "must hold a non-empty JSON list of launchers"),
        ('[{"name": "a", "args": []}]', "entry 0 of .* must be an object with exactly"),
        ('[{"name": "", "log_file": "l", "args": []}]', "name and log_file must be non-empty"),
        ('[{"name": "a", "log_file": "l", "args": "--insecure"}]', "args must be a list of str"),
    ],
    ids=["not-json", "empty", "not-a-list", "missing-key", "empty-name", "args-not-a-list"],
)
def test_read_launchers_refuses_a_malformed_file(tmp_path, content, message):
    path = tmp_path / "launchers.json"
    path.write_text(content, encoding="utf-8")

    with pytest.raises(LaunchersFileError, match=message):
        read_launchers(path)


def test_the_command_refuses_a_malformed_file_with_a_usage_error(tmp_path, capsys):
    path = tmp_path / "launchers.json"
    path.write_text("[]", encoding="utf-8")

    with pytest.raises(SystemExit) as exit_info:
        main([str(path)])

    assert exit_info.value.code == 2
    assert "cohort-launchers: error: " in capsys.readouterr().err


def test_read_launchers_refuses_a_name_given_twice(tmp_path):
    path = write_launchers(tmp_path / "launchers.json", [entry(tmp_path, "a")] * 2)

    with pytest.raises(LaunchersFileError, match="names a launcher twice"):
        read_launchers(path)


def test_read_launchers_names_the_entry_whose_arguments_are_wrong(tmp_path, capsys):
    wrong = {**entry(tmp_path, "b"), "args": ["--insecure"]}  # no --runtime-api-address
    path = write_launchers(tmp_path / "launchers.json", [entry(tmp_path, "a"), wrong])

    with pytest.raises(SystemExit):
        read_launchers(path)
    assert "cohort-launchers (b, entry 1 of" in capsys.readouterr().err


@pytest.mark.integration
def test_the_host_forks_each_launcher_into_its_own_log_and_outlives_all_but_the_last(tmp_path):
    path = write_launchers(tmp_path / "launchers.json", [entry(tmp_path, n) for n in ("a", "b")])
    ready = {name: tmp_path / f"{name}.ready" for name in ("a", "b")}
    host_log = tmp_path / "launchers.log"
    pids_file = tmp_path / "launcher-pids.json"
    with host_log.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - fixed argv
            [sys.executable, "-c", HOST_SCRIPT, str(path), str(pids_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: all(file.exists() and file.read_text() for file in ready.values()))
        pids = {name: int(file.read_text()) for name, file in ready.items()}
        assert json.loads(pids_file.read_text()) == pids

        ready["a"].unlink()  # a's SuperNode is gone: a exits, b and the host stay
        wait_for(lambda: "Launcher for a exited with code 0" in host_log.read_text())
        assert process.poll() is None
        os.kill(pids["b"], 0)

        process.send_signal(signal.SIGTERM)  # to the host alone: it passes the signal on
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()

    text = host_log.read_text()
    assert "Preloaded json" in text
    assert "Launcher for b exited with code 143" in text
    for name, pid in pids.items():
        assert f"Launcher for {name} forked as pid {pid}" in text
        own_log = (tmp_path / "logs" / f"launcher-{name}.log").read_text()
        assert own_log == f"serving {name}:9094 in pid {pid}\n"
