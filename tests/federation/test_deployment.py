"""How a LocalFederation configures the nodes it starts, before any process runs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from federation import deployment
from federation.deployment import LocalFederation
from hospitals.node import NodeSettings


def node(tmp_path, name: str, cpu_threads: int | None = None) -> NodeSettings:
    return NodeSettings(
        hospital=name,
        data_path=tmp_path / f"{name}.csv",
        state_dir=tmp_path / name,
        policy_path=tmp_path / "policy.toml",
        dataset_id=name,
        cpu_threads=cpu_threads,
    )


def test_nodes_on_one_machine_share_its_cores_unless_their_config_says_otherwise(tmp_path):
    hospitals = [node(tmp_path, "a"), node(tmp_path, "b", cpu_threads=3)]
    federation = LocalFederation(workdir=tmp_path / "federation", hospitals=hospitals)

    share = max(1, (os.cpu_count() or 1) // 2)
    written = [NodeSettings.from_file(federation._write_node_config(spec)) for spec in hospitals]

    assert federation.cpu_threads_per_node == share
    assert [spec.cpu_threads for spec in written] == [share, 3]


def test_ports_are_handed_out_once_below_the_ephemeral_range_where_no_connection_takes_them():
    ports = [deployment.free_port() for _ in range(200)]

    assert len(set(ports)) == len(ports)
    assert all(deployment.LOWEST_PORT <= port < deployment._ephemeral_low() for port in ports)


def test_a_port_a_listener_holds_is_not_handed_out(monkeypatch):
    def unused_port() -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            return int(probe.getsockname()[1])

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        held, free = listener.getsockname()[1], unused_port()
        choices = iter([held, free])
        monkeypatch.setattr(deployment.random, "randrange", lambda low, high: next(choices))
        monkeypatch.setattr(deployment, "_ephemeral_low", lambda: 65536)

        assert deployment.free_port() == free


# Exits cleanly only once every process of its group has been asked to stop: each marks its own
# SIGTERM, then waits for the others' marks. Stopped one at a time, the first would wait in vain.
WAITS_FOR_ITS_PEERS = """
import pathlib, signal, sys, time
marks, me, peers = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
def on_term(signum, frame):
    (marks / me).touch()
    while len(list(marks.iterdir())) < peers:
        time.sleep(0.01)
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
(marks.parent / f"ready-{me}").touch()
while True:
    time.sleep(0.1)
"""


def test_processes_stopped_together_share_one_grace_period(tmp_path, monkeypatch):
    monkeypatch.setattr(deployment, "STOP_GRACE_S", 2.0)
    marks = tmp_path / "terms"
    marks.mkdir()
    processes = [
        deployment.ManagedProcess(
            name,
            [sys.executable, "-c", WAITS_FOR_ITS_PEERS, str(marks), name, "2"],
            log_path=tmp_path / f"{name}.log",
            env=os.environ,
        )
        for name in ("first", "second")
    ]
    while not all((tmp_path / f"ready-{p.name}").exists() for p in processes):
        assert all(p.alive() for p in processes)
        time.sleep(0.01)

    deployment.stop_together(processes)

    assert [p.popen.returncode for p in processes] == [0, 0]  # neither needed a SIGKILL


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path, monkeypatch):
    monkeypatch.setattr(deployment, "STOP_GRACE_S", 0.2)
    stubborn = deployment.ManagedProcess(
        "stubborn",
        [
            sys.executable,
            "-c",
            "import pathlib, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "pathlib.Path(sys.argv[1]).touch(); time.sleep(60)",
            str(tmp_path / "ready"),
        ],
        log_path=tmp_path / "stubborn.log",
        env=os.environ,
    )
    while not (tmp_path / "ready").exists():
        time.sleep(0.01)

    stubborn.stop()

    assert stubborn.popen.returncode == -signal.SIGKILL


class CountingControl:
    def __init__(self, online: int) -> None:
        self.online = online
        self.asked = 0

    def online_nodes(self) -> int:
        self.asked += 1
        return self.online


def test_the_superlink_is_asked_for_its_nodes_only_once_every_launcher_is_ready(
    tmp_path, monkeypatch
):
    # Each question runs the flwr CLI, about a second of CPU, while the launchers still import.
    hospitals = [node(tmp_path, "a"), node(tmp_path, "b")]
    federation = LocalFederation(workdir=tmp_path / "federation", hospitals=hospitals)
    federation.control = CountingControl(online=2)  # type: ignore[assignment]
    still_loading = [["a", "b"], ["b"], ["b"], []]
    monkeypatch.setattr(federation, "_raise_if_exited", lambda: None)
    monkeypatch.setattr(
        federation, "_unready_launchers", lambda: still_loading.pop(0) if still_loading else []
    )
    monkeypatch.setattr(deployment.time, "sleep", lambda seconds: None)

    federation.wait_until_ready(timeout_s=60)

    assert still_loading == [] and federation.control.asked == 1


def test_a_launcher_that_died_before_serving_fails_the_start_up_at_once(tmp_path):
    federation = LocalFederation(
        workdir=tmp_path / "federation", hospitals=[node(tmp_path, "a"), node(tmp_path, "b")]
    )
    gone = subprocess.Popen([sys.executable, "-c", ""])  # noqa: S603 - fixed argv
    gone.wait()  # reaped, as the launchers' host reaps a launcher that exits
    nodes = tmp_path / "federation" / "nodes"
    nodes.mkdir(parents=True)
    (nodes / "launcher-pids.json").write_text(json.dumps({"a": os.getpid(), "b": gone.pid}))

    with pytest.raises(RuntimeError, match="b's launcher exited during start-up; see its log"):
        federation._raise_if_exited()

    (nodes / "b.launcher-ready").write_text(str(gone.pid))  # it served, then left: not start-up
    federation._raise_if_exited()
