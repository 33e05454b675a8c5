"""The warm ClientApp launcher: one process per SuperNode that runs each ClientApp task in its task
worker, or forks it."""

from __future__ import annotations

import gc
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import flwr.supercore.exit.exit as flower_exit
import psutil
import pytest
from flwr.supercore import telemetry
from flwr.supercore.constant import TaskType
from flwr.supercore.exit import add_exit_handler
from flwr.supercore.superexec.executor import ExecutionSpec, LaunchResultStatus
from flwr.supernode.runtime import run_clientapp as clientapp_runtime
from opacus.accountants import RDPAccountant

from federation.deployment import LocalFederation
from federation.runner import StudyRequest, run_and_follow
from hospitals.dp import RdpCurves
from hospitals.launcher import (
    ForkExecutor,
    LauncherSettings,
    _announce_ready,
    _end_task,
    exit_code,
    parse_args,
    preload,
    skip_disabled_telemetry,
)
from hospitals.protocol import canonical_json


def execution_spec(task_id: int, task_type: TaskType = TaskType.CLIENT_APP) -> ExecutionSpec:
    return ExecutionSpec(
        task_type=task_type,
        runtime_api_address="127.0.0.1:9094",
        token="token",
        insecure=True,
        root_certificates_path=None,
        runtime_dependency_install=False,
        parent_pid=os.getpid(),
        suppress_output=False,
        task_id=task_id,
    )


def reap_all(executor: ForkExecutor, timeout_s: float = 30.0) -> int:
    """How many tasks finished, reaped until none runs."""
    reaped = 0
    deadline = time.monotonic() + timeout_s
    while executor.running and time.monotonic() < deadline:
        reaped += executor.reap_finished()
        time.sleep(0.01)
    return reaped


def test_parse_args_takes_the_superexec_flags():
    assert parse_args(
        ["--runtime-api-address", "127.0.0.1:9094", "--insecure", "--parent-pid", "42"]
    ) == LauncherSettings(
        runtime_api_address="127.0.0.1:9094",
        insecure=True,
        root_certificates=None,
        parent_pid=42,
    )
    assert parse_args(
        [
            "--runtime-api-address",
            "node:9094",
            "--root-certificates",
            "ca.pem",
            "--max-idle-wait",
            "2",
            "--ready-file",
            "/run/cohort/launcher-ready",
        ]
    ) == LauncherSettings(
        runtime_api_address="node:9094",
        insecure=False,
        root_certificates="ca.pem",
        parent_pid=None,
        max_idle_wait_s=2.0,
        ready_file=Path("/run/cohort/launcher-ready"),
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--runtime-api-address", "a:1", "--insecure", "--root-certificates", "ca.pem"],
        ["--runtime-api-address", "a:1", "--max-idle-wait", "0"],
        ["--insecure"],
    ],
    ids=["insecure-and-certificates", "idle-wait-below-the-minimum", "no-address"],
)
def test_parse_args_refuses(argv, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert "error:" in capsys.readouterr().err


def _raise(error: BaseException) -> None:
    raise error


@pytest.mark.parametrize(
    ("task", "code"),
    [
        (lambda: None, 0),
        (lambda: sys.exit(0), 0),
        (lambda: sys.exit(None), 0),
        (lambda: sys.exit(101), 101),
        (lambda: sys.exit("failed"), 1),
        (lambda: _raise(RuntimeError("boom")), 1),
        (lambda: _raise(KeyboardInterrupt()), 1),
    ],
)
def test_exit_code_is_the_status_the_task_ends_with(task, code):
    assert exit_code(task) == code


def test_tasks_run_in_forked_children_that_are_reaped(tmp_path):
    def task(spec: ExecutionSpec) -> None:
        (tmp_path / str(spec.task_id)).write_text(f"{os.getpid()} {os.getppid()}")
        sys.exit(spec.task_id)  # as flwr_exit ends a ClientApp

    executor = ForkExecutor(task, worker=False)
    results = [executor.launch(execution_spec(task_id)) for task_id in (1, 2, 3)]
    reap_all(executor)  # a task that ended early was reaped as the next one was launched

    assert [result.status for result in results] == [LaunchResultStatus.ACCEPTED] * 3
    assert executor.running == 0
    recorded = [(tmp_path / str(task_id)).read_text().split() for task_id in (1, 2, 3)]
    assert {parent for _, parent in recorded} == {str(os.getpid())}
    assert len({child for child, _ in recorded}) == 3
    for child, _ in recorded:
        with pytest.raises(ChildProcessError):  # reaped: no zombie left
            os.waitpid(int(child), os.WNOHANG)


def curve_computing_executor(tmp_path: Path) -> tuple[ForkExecutor, RdpCurves]:
    """Tasks that each need one RDP curve, and write down how many curves they computed."""
    curves = RdpCurves()

    def task(spec: ExecutionSpec) -> None:
        curves.per_step(noise_multiplier=1.1, sample_rate=0.05)
        (tmp_path / str(spec.task_id)).write_text(str(len(curves.computed_records())))

    return ForkExecutor(task, curves=curves, worker=False), curves


def test_tasks_hand_the_rdp_curves_they_computed_to_later_tasks(tmp_path):
    executor, curves = curve_computing_executor(tmp_path)
    for task_id in (1, 2):
        executor.launch(execution_spec(task_id))
        assert reap_all(executor) == 1

    computed = [(tmp_path / str(task_id)).read_text() for task_id in (1, 2)]
    assert computed == ["1", "0"]  # the second task inherited the first one's curve
    assert len(curves) == 1


def test_a_task_that_exited_unreaped_still_hands_its_curves_to_the_next(tmp_path):
    # The launcher may be holding a request for the next task as the last one exits: the next
    # round's task then comes before the loop reaped the last one.
    executor, _ = curve_computing_executor(tmp_path)
    executor.launch(execution_spec(1))
    os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)  # task 1 exited; not reaped
    executor.launch(execution_spec(2))
    assert reap_all(executor) == 1  # task 1 was reaped as task 2 was launched

    assert (tmp_path / "2").read_text() == "0"


class ReportingJunk(RdpCurves):
    def computed_records(self) -> list[bytes]:
        junk = RdpCurves.RECORD.pack(0.9, 7.0, *[0.1] * len(RDPAccountant.DEFAULT_ALPHAS))
        return [*super().computed_records(), junk]


def test_a_curve_report_that_is_not_a_curve_is_ignored(tmp_path):
    curves = ReportingJunk()
    executor = ForkExecutor(
        lambda spec: curves.per_step(noise_multiplier=1.1, sample_rate=0.05),
        curves=curves,
        worker=False,
    )
    executor.launch(execution_spec(1))
    assert reap_all(executor) == 1
    assert len(curves) == 1  # the real curve is kept, the junk (q = 7) is not


def test_preload_freezes_what_it_imported_out_of_the_tasks_garbage_collections():
    try:
        preload(("json",))
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


@pytest.fixture
def flower_events(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower's `event` in the modules `skip_disabled_telemetry` rebinds, restored afterwards."""
    for module in (clientapp_runtime, flower_exit):
        monkeypatch.setattr(module, "event", telemetry.event)


@pytest.mark.usefixtures("flower_events")
def test_with_telemetry_off_a_task_builds_no_telemetry_event(monkeypatch):
    def describe_the_platform(*args: object) -> str:
        raise AssertionError("built a telemetry event")

    monkeypatch.setattr(telemetry, "FLWR_TELEMETRY_ENABLED", "0")
    monkeypatch.setattr(telemetry, "create_event", describe_the_platform)

    skip_disabled_telemetry()

    for module in (clientapp_runtime, flower_exit):
        assert module.event(telemetry.EventType.FLWR_CLIENTAPP_RUN_ENTER).result(timeout=5) == ""


@pytest.mark.usefixtures("flower_events")
def test_with_telemetry_on_tasks_send_flowers_events(monkeypatch):
    monkeypatch.setattr(telemetry, "FLWR_TELEMETRY_ENABLED", "1")

    skip_disabled_telemetry()

    assert clientapp_runtime.event is telemetry.event
    assert flower_exit.event is telemetry.event


@pytest.mark.parametrize("worker", [True, False], ids=["task worker", "forked"])
def test_close_stops_running_tasks_and_reaps_them(worker: bool):
    others = set(child_pids(os.getpid()))
    executor = ForkExecutor(lambda spec: time.sleep(60), worker=worker)
    executor.launch(execution_spec(1))
    (child,) = set(child_pids(os.getpid())) - others
    began = time.monotonic()
    executor.close()
    assert executor.running == 0
    assert time.monotonic() - began < 5
    with pytest.raises(ChildProcessError):  # reaped: no zombie left
        os.waitpid(child, os.WNOHANG)


def recording(tmp_path: Path, *, end: Any = None) -> Any:
    """A task that writes down the pid it ran in, then ends with `end(spec)`."""

    def task(spec: ExecutionSpec) -> None:
        (tmp_path / str(spec.task_id)).write_text(str(os.getpid()))
        if end is not None:
            end(spec)

    return task


def pid_of(tmp_path: Path, task_id: int) -> int:
    return int((tmp_path / str(task_id)).read_text())


def test_tasks_run_one_after_another_in_one_task_worker(tmp_path):
    executor = ForkExecutor(recording(tmp_path, end=lambda spec: sys.exit(spec.task_id)))
    for task_id in (1, 2, 3):
        assert executor.launch(execution_spec(task_id)).status is LaunchResultStatus.ACCEPTED
        assert executor.running == 1
        assert reap_all(executor) == 1

    (worker,) = {pid_of(tmp_path, task_id) for task_id in (1, 2, 3)}
    assert psutil.Process(worker).ppid() == os.getpid()  # a child, still waiting for tasks
    executor.close()
    with pytest.raises(ChildProcessError):
        os.waitpid(worker, os.WNOHANG)


def test_a_task_that_comes_while_the_task_worker_is_busy_is_forked(tmp_path):
    release = tmp_path / "release"

    def hold_the_first(spec: ExecutionSpec) -> None:
        while spec.task_id == 1 and not release.exists():
            time.sleep(0.01)

    executor = ForkExecutor(recording(tmp_path, end=hold_the_first))
    executor.launch(execution_spec(1))
    executor.launch(execution_spec(2))
    assert executor.running == 2
    deadline = time.monotonic() + 30
    while not (tmp_path / "2").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    release.touch()
    assert reap_all(executor) == 2

    assert pid_of(tmp_path, 1) != pid_of(tmp_path, 2)
    executor.close()


def test_a_task_worker_that_died_is_replaced(tmp_path):
    others = set(child_pids(os.getpid()))
    executor = ForkExecutor(recording(tmp_path, end=lambda spec: os._exit(3)))
    for task_id in (1, 2):
        executor.launch(execution_spec(task_id))
        assert reap_all(executor) == 1  # the task ended with its worker

    assert pid_of(tmp_path, 1) != pid_of(tmp_path, 2)
    executor.close()
    assert set(child_pids(os.getpid())) == others  # both workers reaped


def test_a_task_in_the_worker_runs_its_exit_handlers_once_and_the_worker_goes_on(tmp_path):
    handled = tmp_path / "handled"

    def exit_as_flower_does(spec: ExecutionSpec) -> None:
        def push_status() -> None:
            with handled.open("a") as out:
                out.write(f"{spec.task_id}\n")

        add_exit_handler(push_status)
        clientapp_runtime.flwr_exit(0)  # in the worker, its own end of a task

    executor = ForkExecutor(recording(tmp_path, end=exit_as_flower_does))
    for task_id in (1, 2):
        executor.launch(execution_spec(task_id))
        assert reap_all(executor) == 1

    assert handled.read_text().split() == ["1", "2"]
    assert pid_of(tmp_path, 1) == pid_of(tmp_path, 2)
    executor.close()


@pytest.mark.parametrize(("flower_code", "status"), [(0, 0), (10, 0), (100, 1), (201, 1)])
def test_a_task_ends_in_the_worker_with_the_status_flower_would_exit_with(flower_code, status):
    with pytest.raises(SystemExit) as ended:
        _end_task(flower_code)
    assert ended.value.code == status


def test_only_clientapp_tasks_are_acquired_and_launched():
    executor = ForkExecutor(lambda spec: None)
    assert executor.get_eligible_capacity(set(TaskType)) == ({TaskType.CLIENT_APP}, set())
    result = executor.launch(execution_spec(1, TaskType.SERVER_APP))
    assert result.status is LaunchResultStatus.FAILED
    assert executor.running == 0


def child_pids(pid: int) -> list[int]:
    """Processes whose parent is `pid`, read from /proc."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited while listing
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


@pytest.mark.integration
@pytest.mark.slow
def test_each_node_has_a_launcher_forked_from_one_preload_running_every_task(
    make_consortium, tmp_path
):
    rounds = 2
    consortium = make_consortium(rounds=rounds, round_timeout_s=120)
    hospitals = consortium.hospitals[:2]
    request = StudyRequest(
        protocol_json=canonical_json(consortium.protocol.document),
        aggregator_context=consortium.key.aggregator_context().to_bytes(),
        results_path=tmp_path / "results.jsonl",
        join_timeout_s=60,
    )
    supernode_children: list[int] = []
    with LocalFederation(workdir=tmp_path / "federation", hospitals=hospitals) as federation:

        def look_under_supernodes(event: dict[str, Any]) -> None:
            # Flower's default isolation keeps a SuperExec under each SuperNode for the whole run.
            for supernode in federation.supernodes.values():
                supernode_children.extend(child_pids(supernode.pid))

        outcome = run_and_follow(
            federation.control, request, on_event=look_under_supernodes, timeout_s=420
        )
        launchers = dict(federation.launchers)
        assert federation.launcher_host is not None
        host_pid = federation.launcher_host.pid
        launcher_parents = {name: psutil.Process(pid).ppid() for name, pid in launchers.items()}
        ready_files = {
            spec.hospital: tmp_path / "federation" / "nodes" / f"{spec.hospital}.launcher-ready"
            for spec in hospitals
        }
        serving = {name: path.read_text().strip() for name, path in ready_files.items()}
        first = hospitals[0].hospital
        federation.supernodes[first].kill()
        psutil.wait_procs([psutil.Process(launchers[first])], timeout=10)
        assert not psutil.pid_exists(launchers[first])  # it followed its SuperNode down, reaped
        assert psutil.pid_exists(launchers[hospitals[1].hospital])

    assert serving == {name: str(pid) for name, pid in launchers.items()}
    assert not ready_files[first].exists()
    assert launcher_parents == {spec.hospital: host_pid for spec in hospitals}
    # Stopped with the federation, the host passed the signal on and exited once its launchers had
    # stopped their tasks: within the grace period, without a SIGKILL.
    assert federation.launcher_host.popen.returncode == 0

    assert outcome.status.status == "finished:completed", outcome.failure_reason
    assert supernode_children == []
    logs = tmp_path / "federation" / "logs"
    # Sets: opacus's logging.basicConfig makes Flower's logger print each line twice.
    preloaded = r"Preloaded hospitals\.client_app.* in [\d.]+ s"
    host_log = (logs / "launchers.log").read_text(errors="replace")
    assert len(set(re.findall(preloaded, host_log))) == 1  # once, for every hospital
    assert f"Launcher for {first} exited with code 0" in host_log
    for spec in hospitals:
        launcher_pid = launchers[spec.hospital]
        log = (logs / f"launcher-{spec.hospital}.log").read_text(errors="replace")
        assert not re.findall(preloaded, log)
        # Tasks run in the launcher's task worker, or forked where it is busy: children of the
        # launcher either way.
        forked = set(re.findall(r"Task (\d+) runs in pid (\d+), forked by pid (\d+)", log))
        assert {int(parent) for _, _, parent in forked} <= {launcher_pid}
        exits = set(re.findall(r"Task (\d+): pid (\d+) exited with code (-?\d+)", log))
        assert exits == {(task, child, "0") for task, child, _ in forked}
        in_worker = set(re.findall(r"Task (\d+) runs in the task worker, pid (\d+)", log))
        ended = set(re.findall(r"Task (\d+) ended in the task worker with code (-?\d+)", log))
        assert ended == {(task, "0") for task, _ in in_worker}
        workers = {int(pid) for pid in re.findall(r"Task worker started, pid (\d+)", log)}
        assert {int(pid) for _, pid in in_worker} <= workers
        # A train message per round, and the final evaluate; the first ran in the worker.
        assert len(forked) + len(in_worker) == rounds + 1
        assert in_worker
        supernode_log = (logs / f"supernode-{spec.hospital}.log").read_text(errors="replace")
        assert "Polling the SuperLink 0.05 s after a message, backing off to 1 s" in supernode_log
        for text in (log, supernode_log):
            assert "Starting Flower SuperExec" not in text
            assert "Start `flwr-clientapp` process" not in text


def test_the_ready_file_appears_whole_with_the_launchers_pid(tmp_path):
    ready_file = tmp_path / "launcher-ready"

    _announce_ready(ready_file)

    assert ready_file.read_text() == f"{os.getpid()}\n"
    assert list(tmp_path.iterdir()) == [ready_file]  # no partial file left beside it
