"""`cohort-launcher`: a warm ClientApp launcher for a SuperNode started with `--isolation process`.

Flower 1.41's SuperExec starts a fresh `flwr-clientapp` process for every message, and each one
imports torch, opacus and tenseal again: seconds per message, twice per hospital per round. This
launcher does the SuperExec's job (flwr/supercore/superexec/run_superexec.py) with one difference:
it imports the ClientApp's modules once, and a child of it, forked with them already loaded, runs
Flower's own `run_clientapp`, the function behind `flwr-clientapp`, for each task. That child is
the launcher's task worker (`TaskWorker`), which runs tasks one after another, warm, for as long as
it lives; a task that comes while it is busy gets a child forked for it alone. With Flower's
telemetry off, as Cohort runs it, tasks also skip building the telemetry events Flower would not
send (`skip_disabled_telemetry`).

    cohort-supernode --isolation process --port 9094 ... &
    cohort-launcher --runtime-api-address 127.0.0.1:9094 --insecure --parent-pid $! \
        --ready-file /run/cohort/launcher-ready

Where one machine holds several hospitals' SuperNodes, `cohort-launchers` (launcher_host.py)
forks each one's launcher from a single preload instead.

Fork safety. The parent never runs a torch op, so no OpenMP pool exists to be inherited broken, and
never initialises CUDA, whose context cannot survive a fork: `torch.cuda` belongs in the tasks
only. It starts no thread and registers no Flower exit handler, so a child inherits neither a lock
held by another thread nor the parent's clean-up. The idle pool threads that importing numpy and
pyarrow starts (OpenBLAS, jemalloc) are handled by those libraries' own pthread_atfork handlers; a
forked child was checked to run BLAS, torch, Parquet and CKKS work. The task worker does run torch
and start threads (each task's Flower heartbeat among them), but it forks nothing. Every child
leaves with `os._exit`, never unwinding into the parent's loop: an interpreter exit in a fork runs
C++ static destructors that abort ("std::system_error: No such process"). Random state: CPython
reseeds `random` in a child; numpy's and torch's global generators are inherited as they are, where
a fresh interpreter would start them from fixed seeds anyway: the node seeds its own generators
(hospitals/dp.py) and SEAL seeds each PRNG from the OS when a task encrypts.

What a forked task hands back. Its memory is gone when it exits, and with it Opacus's RDP curve
of the study's (σ, q), ~0.1 s of CPU that every training round would otherwise compute again. So
each forked task writes the curves it computed to a pipe as it exits, the launcher keeps them
(`hospitals.dp.RDP_CURVES`) and later forks inherit them. Nothing else comes back. (The task
worker keeps the curves its own tasks computed.)
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from functools import partial
from logging import DEBUG, INFO, WARNING
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import flwr.supercore.exit.exit as flower_exit
import httpx
from flwr.proto.runtime_pb2 import AcquireTaskRequest
from flwr.supercore import log, telemetry
from flwr.supercore.constant import TaskType
from flwr.supercore.exit import exit_handler as flower_exit_handlers
from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.superexec.executor import ExecutionSpec, LaunchResult, LaunchResultStatus
from flwr.supercore.superexec.plugin import AutoExecPlugin
from flwr.supercore.tls import validate_and_resolve_root_certificates
from flwr.supercore.utils import disable_process_dumping
from flwr.supernode.runtime import run_clientapp as clientapp_runtime

from hospitals.dp import RDP_CURVES, RdpCurves
from hospitals.polling import (
    DEFAULT_MAX_IDLE_WAIT_S,
    IdleBackoff,
    add_max_idle_wait_option,
    replace_in_flower,
    retry_object_pulls_sooner,
)
from hospitals.processes import process_exists

# What every task would otherwise import for itself: the ClientApp that
# platform/federation/app/pyproject.toml names, and torch._dynamo (~190 modules, 0.4 s), which
# torch.optim imports on an optimizer's first parameter group (torch/_compile.py). Flower's loader
# (flwr/supercore/object_ref.py, load_app) imports a component only when it is not in sys.modules
# yet, so forked tasks use these imports; a run naming another ClientApp imports it in each task.
# The codecs and pyarrow modules are what the tasks of a study still imported, each, on their
# first call: reading the app bundle's zip (cp437 names), the node's CSV (utf-8-sig) and turning
# its Arrow table into pandas. torch.profiler._cupti_monitor is what every optimizer step's
# record_function imports on first use (~4 ms a task); importing it loads no CUDA library.
PRELOAD_MODULES = (
    "hospitals.client_app",
    "torch._dynamo",
    "encodings.cp437",
    "encodings.utf_8_sig",
    "pyarrow.pandas_compat",
    "pyarrow.vendored.version",
    "torch.profiler._cupti_monitor",
)
# Flower's SuperExec asks for a task every FLWR_SUPEREXEC_TASK_POLL_INTERVAL (default 1 s,
# run_superexec.py). This launcher asks as hospitals/polling.py says: soon after a task, since a
# round's messages come in bursts, and at most every `--max-idle-wait` while none comes.
# Between attempts while the SuperNode's Runtime API does not answer (starting or stopping).
RECONNECT_DELAY_S = 1.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass(frozen=True)
class LauncherSettings:
    runtime_api_address: str
    insecure: bool
    root_certificates: str | None  # None with TLS: the system's CAs, as Flower does
    parent_pid: int | None  # the SuperNode's: the launcher exits when it does
    max_idle_wait_s: float = DEFAULT_MAX_IDLE_WAIT_S
    # Exists while tasks are served: created after the preload, removed on exit.
    ready_file: Path | None = None


def exit_code(task: Callable[[], object]) -> int:
    """The exit status `task` ends with: `flwr_exit` ends every ClientApp with SystemExit."""
    try:
        task()
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        return 1
    except BaseException:  # in a child, nothing may unwind into the parent's loop
        traceback.print_exc()
        return 1
    return 0


def run_task(spec: ExecutionSpec) -> None:
    """What `flwr-clientapp` does with the arguments Flower's SubprocessExecutor would give it.

    See flwr/supernode/cli/flwr_clientapp.py and superexec/executor/subprocess_executor.py.
    """
    clientapp_runtime.run_clientapp(
        runtime_api_address=spec.runtime_api_address,
        token=spec.token,
        insecure=spec.insecure,
        certificates=validate_and_resolve_root_certificates(
            spec.root_certificates_path, spec.insecure
        ),
        parent_pid=spec.parent_pid,
        runtime_dependency_install=spec.runtime_dependency_install,
    )


class ForkExecutor:
    """Flower's SuperExec `Executor` protocol (superexec/executor/types.py): each task runs in the
    task worker, or in a child forked for it while the worker is busy (or with `worker=False`)."""

    def __init__(
        self,
        task: Callable[[ExecutionSpec], None] = run_task,
        *,
        curves: RdpCurves = RDP_CURVES,
        worker: bool = True,
    ) -> None:
        self._task = task
        self._curves = curves
        self._children: dict[int, _Child] = {}
        self._use_worker = worker
        self._worker: TaskWorker | None = None

    @property
    def running(self) -> int:
        return len(self._children) + (self._worker is not None and self._worker.busy)

    def get_eligible_capacity(
        self,
        supported_task_types: set[TaskType],
        *,
        insecure: bool = False,
        root_certificates_path: str | None = None,
    ) -> tuple[set[TaskType], set[str]]:
        """ClientApps only: other task types have entry points this process did not preload."""
        del insecure, root_certificates_path
        return supported_task_types & {TaskType.CLIENT_APP}, set()

    def wait_for_capacity(
        self,
        task_type: TaskType | None = None,
        *,
        fab_hash: str | None = None,
        insecure: bool = False,
        root_certificates_path: str | None = None,
    ) -> None:
        """Returns at once: like Flower's subprocesses, forks have no capacity gate."""
        del task_type, fab_hash, insecure, root_certificates_path

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        if spec.task_type is not TaskType.CLIENT_APP:
            return LaunchResult.failed(f"this launcher runs ClientApps only, not {spec.task_type}")
        # A task that exited while the launcher held its request for this one has RDP curves
        # to hand on: unreaped, this fork would compute them again (~0.2 CPU-s).
        self.reap_finished()
        if self._use_worker and (worker := self._idle_worker()) is not None:
            worker.run(spec)
            log(INFO, "Task %d: handed to the task worker, pid %d", spec.task_id, worker.pid)
            return LaunchResult.accepted()
        # Unflushed output would be written twice: once by the parent and once by the child.
        flush_standard_streams()
        try:
            reports, report_to = os.pipe()
        except OSError as error:  # out of file descriptors
            return LaunchResult.failed(f"no pipe for the task: {error}")
        try:
            pid = os.fork()
        except OSError as error:  # out of processes or memory: the SuperNode expires the task
            os.close(reports)
            os.close(report_to)
            return LaunchResult.failed(f"fork failed: {error}")
        if pid == 0:
            os.close(reports)
            _run_child(spec, self._task, report=lambda: _report_curves(self._curves, report_to))
        os.close(report_to)
        self._children[pid] = _Child(task_id=spec.task_id, reports=reports)
        log(INFO, "Task %d: ClientApp forked as pid %d", spec.task_id, pid)
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Flower's name for `reap_finished`."""
        self.reap_finished()

    def reap_finished(self) -> int:
        """Reap the tasks that finished, so that none is left a zombie; how many there were."""
        finished = self._worker.tasks_finished() if self._worker is not None else 0
        for pid in list(self._children):
            reaped, status = os.waitpid(pid, os.WNOHANG)
            if reaped:
                self._reaped(pid, status)
                finished += 1
        return finished

    def close(self) -> None:
        """Stop the running tasks (Flower's handler in each reports it failed) and reap them."""
        if self._worker is not None:
            self._worker.close()
            self._worker = None
        for pid in self._children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue  # exited, not reaped yet
        for pid in list(self._children):
            _, status = os.waitpid(pid, 0)
            self._reaped(pid, status)

    def _idle_worker(self) -> TaskWorker | None:
        """The task worker if it waits for a task, started anew if there is none (or it died);
        None while it runs one: a task that comes meanwhile is forked, as it would be without."""
        if self._worker is not None and not self._worker.alive():
            log(WARNING, "The task worker (pid %d) died; starting another", self._worker.pid)
            self._worker.close()
            self._worker = None
        if self._worker is None:
            try:
                self._worker = TaskWorker.start(self._task)
            except OSError as error:  # out of pipes or processes: this task is forked instead
                log(WARNING, "No task worker (%s); forking the task", error)
                return None
        return None if self._worker.busy else self._worker

    def _reaped(self, pid: int, status: int) -> None:
        child = self._children.pop(pid)
        log(
            INFO,
            "Task %d: pid %d exited with code %d",
            child.task_id,
            pid,
            os.waitstatus_to_exitcode(status),
        )
        _remember_curves(self._curves, child.reports)


@dataclass(frozen=True)
class _Child:
    task_id: int
    reports: int  # read end of the pipe the task writes its RDP curves to as it exits


class TaskWorker:
    """A child of the launcher that runs ClientApp tasks one after another, for as long as it
    lives: the launcher's parent side of it.

    A task forked afresh pays for the fork in copy-on-write faults (~9,500 a task, ~3.4 µs each
    here) and for every first call torch, Opacus, pandas and TenSEAL make in a process; a task in
    the worker finds the pages its predecessors copied and the calls warm. What stays between tasks
    is the worker's memory: each task reads the node's config, policy and consent afresh, finds
    the dataset and study key its predecessors parsed unless their files or the consent snapshot
    changed (hospitals.parsed_files), and leaves the RDP curves it computed to the tasks after
    it. Tasks reach the worker through a pipe (an `ExecutionSpec` each, a line of JSON) and
    it answers through another (a byte each: the exit code). A task that comes while the worker
    runs one gets a child forked for it alone, as every task does with
    `ForkExecutor(worker=False)`; so does every task where the worker cannot start.
    """

    def __init__(self, pid: int, *, specs: int, done: int) -> None:
        self.pid = pid
        self._specs = specs  # write end: specs to run
        self._done = done  # read end: one byte per task finished
        self.busy = False

    @classmethod
    def start(cls, task: Callable[[ExecutionSpec], None]) -> TaskWorker:
        specs_out, specs_in = os.pipe()
        try:
            done_out, done_in = os.pipe()
        except OSError:
            os.close(specs_out)
            os.close(specs_in)
            raise
        flush_standard_streams()
        try:
            pid = os.fork()
        except OSError:
            for end in (specs_out, specs_in, done_out, done_in):
                os.close(end)
            raise
        if pid == 0:
            os.close(specs_in)
            os.close(done_out)
            exit_forked(lambda: serve_in_worker(task, specs=specs_out, done=done_in))
        os.close(specs_out)
        os.close(done_in)
        os.set_blocking(done_out, False)
        log(INFO, "Task worker started, pid %d", pid)
        return cls(pid, specs=specs_in, done=done_out)

    def run(self, spec: ExecutionSpec) -> None:
        """Hand `spec` to the worker, which must be idle. One write of under PIPE_BUF: whole."""
        os.write(self._specs, json.dumps(asdict(spec)).encode() + b"\n")
        self.busy = True

    def tasks_finished(self) -> int:
        """1 if the task it ran has finished since last asked (or the worker died), else 0."""
        try:
            answer = os.read(self._done, 1)
        except BlockingIOError:
            return 0
        if not answer:  # the worker is gone: so is the task it ran
            was_busy, self.busy = self.busy, False
            return int(was_busy)
        self.busy = False
        return 1

    def alive(self) -> bool:
        reaped, status = os.waitpid(self.pid, os.WNOHANG)
        if reaped:
            log(
                INFO,
                "Task worker pid %d exited with code %d",
                self.pid,
                os.waitstatus_to_exitcode(status),
            )
        return not reaped

    def close(self) -> None:
        """Stop the worker: at once if it runs a task (Flower's handler reports it failed), else
        as it reads the end of its pipe. Then reap it."""
        os.close(self._specs)
        if self.busy:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass  # reaped already, when it died
        os.close(self._done)


def serve_in_worker(task: Callable[[ExecutionSpec], None], *, specs: int, done: int) -> int:
    """The worker's side: run each spec read from `specs`, answering its exit code on `done`,
    until the launcher closes `specs`.

    Flower's `run_clientapp` ends a task with `flwr_exit`, which exits the process, after a
    5 s grace thread that would kill it anyway (supercore/exit/exit.py). Here `_end_task` takes
    its place: it runs the exit handlers the task registered (pushing its status) and ends the
    task, not the worker. Tasks get no parent process monitor: the launcher watches the
    SuperNode, and the worker ends with the launcher, whose pipe then closes.
    """
    replace_in_flower(clientapp_runtime, "flwr_exit", _end_task)
    for line in os.fdopen(specs, "rb"):  # until the launcher closes the pipe
        fields = json.loads(line)
        spec = ExecutionSpec(
            **{**fields, "task_type": TaskType(fields["task_type"]), "parent_pid": None}
        )
        log(INFO, "Task %d runs in the task worker, pid %d", spec.task_id, os.getpid())
        code = exit_code(partial(task, spec))
        # Whatever a task registered for its exit and did not get to run (it ended before
        # Flower's exit) runs now, as it would have at a forked task's exit.
        _run_exit_handlers()
        log(INFO, "Task %d ended in the task worker with code %d", spec.task_id, code)
        flush_standard_streams()
        os.write(done, bytes([code & 0xFF]))
    return 0


def _end_task(code: int, *args: object, **kwargs: object) -> NoReturn:
    """`flwr_exit` for a task in the worker: its exit handlers, then the exit status Flower's
    would give the process (0 for codes 0-99, 1 for errors), raised for `exit_code` to take."""
    del args, kwargs
    _run_exit_handlers()
    raise SystemExit(0 if 0 <= code < 100 else 1)


def _run_exit_handlers() -> None:
    # Both of Flower's phases, in its order; each handler runs once and is then forgotten.
    flower_exit_handlers.trigger_exit_handlers(run_before_force_exit=True)
    flower_exit_handlers.trigger_exit_handlers(run_before_force_exit=False)


def _report_curves(curves: RdpCurves, report_to: int) -> None:
    """Write the curves this task computed for the launcher to keep. Never blocks: a pipe holds
    ~50 curves, and each record is written whole or not at all (it is under PIPE_BUF)."""
    os.set_blocking(report_to, False)
    for record in curves.computed_records():
        try:
            os.write(report_to, record)
        except OSError:  # pipe full or closed: the curves are a saving, not a duty
            break
    os.close(report_to)


def _remember_curves(curves: RdpCurves, reports: int) -> None:
    """Keep the curves an exited task reported. Non-blocking: a process the task started could
    still hold the pipe's write end open."""
    os.set_blocking(reports, False)
    received = bytearray()
    try:
        while chunk := os.read(reports, 1 << 16):
            received += chunk
    except BlockingIOError:
        pass
    finally:
        os.close(reports)
    size = curves.RECORD.size
    for start in range(0, len(received) - size + 1, size):
        try:
            curves.remember(bytes(received[start : start + size]))
        except ValueError as error:
            log(WARNING, "Ignored an RDP curve a task reported: %s", error)


def _run_child(
    spec: ExecutionSpec, task: Callable[[ExecutionSpec], None], *, report: Callable[[], None]
) -> NoReturn:
    def run() -> int:
        # Flower's run_clientapp installs the task's own stop handlers.
        log(
            INFO,
            "Task %d runs in pid %d, forked by pid %d",
            spec.task_id,
            os.getpid(),
            os.getppid(),
        )
        code = exit_code(lambda: task(spec))
        report()
        return code

    exit_forked(run)


def exit_forked(run: Callable[[], int]) -> NoReturn:
    """In a child just forked: `run`, then exit with the status it returns (1 if it raised).

    Stop signals take their default action until `run` installs handlers of its own: the parent's
    would unwind into the parent's loop and clean-up. And the child leaves with `os._exit`, never
    unwinding (module docstring, fork safety).
    """
    code = 1
    try:
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        code = run()
    finally:
        flush_standard_streams()
        os._exit(code)


def flush_standard_streams() -> None:
    sys.stdout.flush()
    sys.stderr.flush()


def preload(modules: Sequence[str] = PRELOAD_MODULES) -> None:
    """Import the ClientApp and all it imports, once, for every forked task to share."""
    started = time.monotonic()
    for module in modules:
        importlib.import_module(module)
    # Every object so far lives as long as the launcher: a task's garbage collections would walk
    # them all and, by updating their headers, copy each page of them into the child.
    gc.freeze()
    log(INFO, "Preloaded %s in %.1f s", ", ".join(modules), time.monotonic() - started)


def serve(settings: LauncherSettings) -> None:
    """Preload, then serve the SuperNode's tasks until it exits or a signal comes."""
    prepare_warm_process()
    serve_tasks(settings)


def prepare_warm_process(modules: Sequence[str] = PRELOAD_MODULES) -> None:
    """What a process does before it forks tasks, or launchers (hospitals/launcher_host.py)."""
    # As flower-superexec does: task tokens pass through this memory, and the tasks, which read
    # patient data, inherit the setting.
    disable_process_dumping(strict=False)
    preload(modules)


def serve_tasks(settings: LauncherSettings) -> None:
    """Acquire the SuperNode's tasks and fork each, until the SuperNode exits or a signal comes."""
    retry_object_pulls_sooner(clientapp_runtime, "pull_and_inflate_object_from_tree")
    skip_disabled_telemetry()
    executor = ForkExecutor()
    plugin = AutoExecPlugin(
        runtime_api_address=settings.runtime_api_address,
        insecure=settings.insecure,
        root_certificates_path=settings.root_certificates,
        # A warm process cannot take a run's own dependencies: they need a fresh interpreter.
        runtime_dependency_install=False,
        executor=executor,
    )
    # No retry invoker (it retries forever, so the loop could not notice the SuperNode exit) and
    # no tracing interceptor (an exporter thread would be forked with the process).
    client = RuntimeHttpClient.from_server_address(
        server_address=settings.runtime_api_address,
        insecure=settings.insecure,
        root_certificates=validate_and_resolve_root_certificates(
            settings.root_certificates, settings.insecure
        ),
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
    )
    for signum in STOP_SIGNALS:
        signal.signal(signum, _exit_on_signal)
    log(INFO, "Serving ClientApp tasks of the SuperNode at %s", settings.runtime_api_address)
    backoff = IdleBackoff(longest_s=settings.max_idle_wait_s)
    try:
        if settings.ready_file is not None:
            _announce_ready(settings.ready_file)
        while _alive(settings.parent_pid):
            asked = time.monotonic()
            # A task's end, like its start, means the round goes on: the next message is near.
            if executor.reap_finished() or _acquire_and_launch(client, plugin, executor):
                backoff.work_found()
            else:
                # cohort-supernode holds a request until a task comes or a second has passed
                # (hospitals/supernode.py, task_wait): time waited there counts as waited here.
                time.sleep(max(0.0, backoff.next_wait() - (time.monotonic() - asked)))
        log(
            INFO,
            "SuperNode (pid %s) exited; stopping %d running task(s)",
            settings.parent_pid,
            executor.running,
        )
    finally:
        if settings.ready_file is not None:
            settings.ready_file.unlink(missing_ok=True)
        client.close()
        executor.close()


def skip_disabled_telemetry() -> None:
    """With Flower's telemetry off, a task no longer builds the events it would not send.

    Flower's `event` builds its payload before it checks FLWR_TELEMETRY_ENABLED: a task's start
    and exit each read a source id from the home folder and describe the platform, which runs
    `file` on the interpreter (platform.architecture). That was ~9 ms of CPU per task, each time
    for nothing. Telemetry on, Flower's `event` stays.
    """
    if telemetry.FLWR_TELEMETRY_ENABLED == "1":
        return
    for module in (clientapp_runtime, flower_exit):
        replace_in_flower(module, "event", _unsent_event)


def _unsent_event(
    event_type: telemetry.EventType, event_details: dict[str, Any] | None = None
) -> Future[str]:
    """Flower's `event` with telemetry off, minus the payload: a future that is already done."""
    del event_type, event_details
    done: Future[str] = Future()
    done.set_result("")
    return done


def _announce_ready(ready_file: Path) -> None:
    """Create `ready_file` holding this process's pid, whole: whoever sees it can read the pid."""
    write_whole(ready_file, f"{os.getpid()}\n")


def write_whole(path: Path, text: str) -> None:
    """Write `text` to `path` so that no reader ever sees part of it."""
    written = path.with_name(f".{path.name}.{os.getpid()}")
    written.write_text(text, encoding="utf-8")
    written.replace(path)


def _acquire_and_launch(
    client: RuntimeHttpClient, plugin: AutoExecPlugin, executor: ForkExecutor
) -> bool:
    """One turn of run_superexec's loop; True when a task was launched."""
    task_types, fab_hashes = executor.get_eligible_capacity(set(plugin.supported_task_types))
    try:
        response = client.AcquireTask(
            AcquireTaskRequest(supported_task_types=task_types, agentapp_fab_hashes=fab_hashes)
        )
    except httpx.TransportError as error:  # the SuperNode is starting or stopping
        log(DEBUG, "Runtime API did not answer (%s); retrying", error)
        time.sleep(RECONNECT_DELAY_S)
        return False
    except httpx.HTTPStatusError as error:
        log(WARNING, "Runtime API refused AcquireTask (%s); retrying", error)
        time.sleep(RECONNECT_DELAY_S)
        return False
    if not (response.HasField("task") and response.token):
        return False
    result = plugin.launch_task(token=response.token, task=response.task)
    if result.status is not LaunchResultStatus.ACCEPTED:
        # The SuperNode expires the task, as it does when Flower's own executor fails one.
        log(WARNING, "Task %d not launched: %s", response.task.task_id, result.message)
    return True


def _alive(pid: int | None) -> bool:
    """Whether the SuperNode runs: polled each turn, not watched from a thread as Flower does
    (supercore/app_utils.py), so that this process stays single-threaded for fork."""
    return pid is None or process_exists(pid)


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    # Unwinds through serve_tasks' `finally`, which stops and reaps the running tasks. Once only:
    # a hosted launcher gets its process group's signal and the host's, and a second SystemExit
    # raised inside that `finally` would leave tasks unreaped.
    for stop in STOP_SIGNALS:
        signal.signal(stop, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def parser(prog: str = "cohort-launcher") -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog=prog,
        description="Run a SuperNode's ClientApp tasks, forked from one warm process, in place of "
        "flower-superexec (for flower-supernode --isolation process).",
    )
    root.add_argument(
        "--runtime-api-address",
        required=True,
        metavar="HOST:PORT",
        help="the SuperNode's Runtime API (its --host and --port)",
    )
    tls = root.add_mutually_exclusive_group()
    tls.add_argument(
        "--insecure",
        action="store_true",
        help="plain HTTP, for a SuperNode started without --ssl-certfile",
    )
    tls.add_argument(
        "--root-certificates",
        metavar="PATH",
        help="CA certificate (PEM) for the Runtime API's TLS: the SuperNode's --ssl-ca-certfile",
    )
    root.add_argument(
        "--parent-pid",
        type=int,
        metavar="PID",
        help="the SuperNode's pid: exit, stopping running tasks, when it exits",
    )
    add_max_idle_wait_option(root, polled_for="a task")
    root.add_argument(
        "--ready-file",
        type=Path,
        metavar="PATH",
        help="create PATH (holding this process's pid) once the ClientApp's modules are loaded "
        "and tasks are served, and remove it on exit: for health checks and start-up scripts",
    )
    return root


def parse_args(
    argv: Sequence[str] | None = None, *, prog: str = "cohort-launcher"
) -> LauncherSettings:
    args = parser(prog).parse_args(argv)
    return LauncherSettings(
        runtime_api_address=args.runtime_api_address,
        insecure=args.insecure,
        root_certificates=args.root_certificates,
        parent_pid=args.parent_pid,
        max_idle_wait_s=args.max_idle_wait,
        ready_file=args.ready_file,
    )


def main(argv: Sequence[str] | None = None) -> int:
    serve(parse_args(argv))
    return 0
