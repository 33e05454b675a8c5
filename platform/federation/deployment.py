"""A whole Flower deployment on this machine: one SuperLink and one SuperNode per hospital.

Each SuperNode runs in Flower's `--isolation process` mode beside a warm ClientApp launcher that
imported torch, opacus and tenseal once and runs every ClientApp task in a task worker forked from
it (a task that comes while the worker is busy is forked on its own), instead of Flower's SuperExec
starting a fresh `flwr-clientapp` per message. The hospitals share this
machine, so their launchers are forked from one such process too (`cohort-launchers`,
hospitals/launcher_host.py) and share its imported modules' memory: 10 hospitals measured 218 MiB
each instead of 504, and one preload instead of one per hospital. Every process gets free
loopback ports and its own log file, each SuperNode, the SuperLink and the launchers' host their
own process group, and all are stopped by PID on exit, Ctrl-C included. Processes that Flower
spawns (SuperExec, ServerApp) and the launchers' tasks follow their parents down.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeAlias

from federation.control import SCRIPTS_DIR, FlowerControl
from hospitals.node import NodeSettings
from hospitals.processes import process_exists

STOP_GRACE_S = 5.0
SUPERLINK_STATE = ":flwr-in-memory:"  # flwr.supercore.constant.FLWR_IN_MEMORY_DB_NAME
CONNECTION = "local"

# free_port's ports: above the well-known and most registered services' ports, below the
# kernel's ephemeral range (Linux says where that starts; IANA's range starts at 49152).
LOWEST_PORT = 20000
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
DEFAULT_EPHEMERAL_LOW = 49152
PORT_TRIES = 100
_HANDED_OUT: set[int] = set()

# A hospital's SuperNode is described by its node settings alone: the node.toml keys hospital IT
# writes (hospitals/node.py), which this deployment hands to the SuperNode as that very file.
HospitalNodeSpec: TypeAlias = NodeSettings


def free_port() -> int:
    """A loopback port that no listener holds now, below the kernel's ephemeral range.

    The port the kernel picks for port 0 comes from the ephemeral range, where every outgoing
    connection takes its local port too: with 50 hospitals connecting, one connection took the
    port chosen for a SuperNode before the SuperNode could listen on it. Below that range only a
    listener that asks for a port gets it, and this process hands each port out once.
    """
    low = _ephemeral_low()
    for _ in range(PORT_TRIES):
        port = random.randrange(LOWEST_PORT, low)  # noqa: S311 - a port, not a secret
        if port not in _HANDED_OUT and _bindable(port):
            _HANDED_OUT.add(port)
            return port
    raise OSError(f"no free loopback port among {PORT_TRIES} tried in {LOWEST_PORT}-{low - 1}")


def _ephemeral_low() -> int:
    try:
        return int(EPHEMERAL_RANGE.read_text(encoding="ascii").split()[0])
    except (OSError, ValueError, IndexError):
        return DEFAULT_EPHEMERAL_LOW


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def flower_environment(flwr_home: Path) -> dict[str, str]:
    """The environment for Flower's processes and CLI, with this interpreter's scripts on PATH."""
    return {
        **os.environ,
        "PATH": f"{SCRIPTS_DIR}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(flwr_home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        # Otherwise the SuperLink runs `uv sync` per run and downloads a CUDA torch (STACK-NOTES).
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PYTHONUNBUFFERED": "1",
    }


class ManagedProcess:
    """A child process in its own process group, logging to a file, stopped by PID."""

    def __init__(
        self, name: str, command: Sequence[str], *, log_path: Path, env: Mapping[str, str]
    ):
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            self.popen = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                list(command),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env),
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        """SIGTERM to the whole group, then SIGKILL after a grace period."""
        stop_together([self])

    def terminate(self) -> None:
        """SIGTERM to the whole group: ask it to stop, without waiting."""
        self._signal_group(signal.SIGTERM)

    def wait_or_kill(self, deadline: float) -> None:
        """Wait for it to exit until `deadline` (time.monotonic()), then SIGKILL the group."""
        try:
            self.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """Die at once, as a crashed hospital would."""
        self._signal_group(signal.SIGKILL)
        self.popen.wait()

    def _signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.popen.pid, signum)
        except ProcessLookupError:
            pass


def stop_together(processes: Iterable[ManagedProcess]) -> None:
    """Stop them all within one grace period: SIGTERM to each, then SIGKILL to any left.

    A process may take seconds to stop (a SuperNode first ends the request for a task it holds),
    and one after another 50 hospitals' SuperNodes took about a minute.
    """
    running = [process for process in processes if process.alive()]
    for process in running:
        process.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for process in running:
        process.wait_or_kill(deadline)


class LocalFederation:
    """SuperLink + SuperNodes on loopback, for the demo, tests and single-machine studies."""

    def __init__(self, *, workdir: Path, hospitals: Sequence[HospitalNodeSpec]) -> None:
        self.workdir = workdir
        self.hospitals = list(hospitals)
        self.port = free_port()
        self.flwr_home = workdir / "flwr-home"
        self.env = flower_environment(self.flwr_home)
        self.control = FlowerControl(env=self.env, connection=CONNECTION)
        self.superlink: ManagedProcess | None = None
        self.supernodes: dict[str, ManagedProcess] = {}
        # The process the launchers are forked from, and each hospital's launcher pid once it
        # serves its SuperNode's tasks (it exits when its SuperNode dies).
        self.launcher_host: ManagedProcess | None = None
        self.launchers: dict[str, int] = {}
        self._runtime_ports: dict[str, int] = {}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def cpu_threads_per_node(self) -> int:
        """Every node trains on this one machine: each gets its share of the cores, so that no
        task's torch threads wait for a core another node's task holds."""
        return max(1, (os.cpu_count() or 1) // max(1, len(self.hospitals)))

    def __enter__(self) -> LocalFederation:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, *, connect_timeout_s: float = 120.0) -> None:
        self._write_cli_config()
        self.superlink = ManagedProcess(
            "superlink",
            [
                # Flower's SuperLink, holding empty pulls for messages (federation/superlink.py).
                str(SCRIPTS_DIR / "cohort-superlink"),
                "--insecure",
                "--port",
                str(self.port),
                # Python state in memory, not SQLite on disk: with 30 SuperNodes polling, the
                # SQLite store answered pushes and pulls "database is locked" and replies were
                # lost. The deployment lives as long as this object, so nothing needs to persist.
                "--database",
                SUPERLINK_STATE,
                "--disable-runtime-dependency-installation",
            ],
            log_path=self.workdir / "logs" / "superlink.log",
            env=self.env,
        )
        for spec in self.hospitals:
            self.supernodes[spec.hospital] = self._start_supernode(spec)
        self.launcher_host = self._start_launchers()
        self.wait_until_ready(timeout_s=connect_timeout_s)

    def _start_supernode(self, spec: HospitalNodeSpec) -> ManagedProcess:
        spec.state_dir.mkdir(parents=True, exist_ok=True)
        runtime_port = self._runtime_ports[spec.hospital] = free_port()
        return ManagedProcess(
            spec.hospital,
            [
                # Flower's SuperNode, polling with an idle backoff (hospitals/supernode.py).
                str(SCRIPTS_DIR / "cohort-supernode"),
                "--insecure",
                "--superlink",
                self.superlink_address_for(spec),
                # No SuperExec of Flower's: the hospital's launcher acquires the tasks instead.
                "--isolation",
                "process",
                # The Runtime API the launcher and its tasks talk to (plain HTTP on loopback).
                "--port",
                str(runtime_port),
                "--node-config",
                str(self._write_node_config(spec)),
            ],
            log_path=self.workdir / "logs" / f"supernode-{spec.hospital}.log",
            env=self.env,
        )

    def superlink_address_for(self, spec: HospitalNodeSpec) -> str:
        """Where `spec`'s SuperNode reaches the SuperLink: directly, on loopback (a test puts a
        failing proxy in between)."""
        del spec
        return self.address

    def _start_launchers(self) -> ManagedProcess:
        """One launcher per SuperNode, each with the arguments a `cohort-launcher` beside it
        would get, all forked from one `cohort-launchers`."""
        launchers = []
        for hospital, supernode in self.supernodes.items():
            ready_file = self._launcher_ready_file(hospital)
            ready_file.unlink(missing_ok=True)
            args = [
                "--runtime-api-address",
                f"127.0.0.1:{self._runtime_ports[hospital]}",
                # The SuperNode serves its Runtime API without TLS here, as Flower then tells its
                # own SuperExec (flwr/supernode/start_client_internal.py).
                "--insecure",
                "--parent-pid",
                str(supernode.pid),
                "--ready-file",
                str(ready_file),
            ]
            log_file = str(self._launcher_log(hospital))
            launchers.append({"name": hospital, "log_file": log_file, "args": args})
        launchers_file = self.workdir / "nodes" / "launchers.json"
        launchers_file.write_text(json.dumps(launchers, indent=1), encoding="utf-8")
        self._launcher_pids_file().unlink(missing_ok=True)
        return ManagedProcess(
            "launchers",
            [
                str(SCRIPTS_DIR / "cohort-launchers"),
                str(launchers_file),
                "--pids-file",
                str(self._launcher_pids_file()),
            ],
            log_path=self.workdir / "logs" / "launchers.log",
            env=self.env,
        )

    def wait_until_ready(self, *, timeout_s: float) -> None:
        """Until every SuperNode is connected and every launcher serves: a run started sooner has
        its first round wait for the ClientApp's imports and share the CPU with them."""
        deadline = time.monotonic() + timeout_s
        online = 0
        while time.monotonic() < deadline:
            self._raise_if_exited()
            # The launchers' ready files first: asking the SuperLink runs the flwr CLI, about a
            # second of CPU that the launchers' imports would otherwise share, twice a second.
            if not self._unready_launchers():
                online = self.control.online_nodes()
                if online >= len(self.hospitals):
                    self.launchers = self._forked_launchers()
                    return
            time.sleep(0.5)
        raise TimeoutError(
            f"the hospital nodes were not ready within {timeout_s:g} s: {online} of "
            f"{len(self.hospitals)} connected to the SuperLink at {self.address}, launchers "
            f"not serving yet: {', '.join(self._unready_launchers()) or 'none'}; "
            f"see the logs in {self.workdir / 'logs'}"
        )

    def stop(self) -> None:
        # Launchers first: their running tasks can still report to a live SuperNode.
        if self.launcher_host is not None:
            self.launcher_host.stop()
        stop_together(self.supernodes.values())
        if self.superlink is not None:
            self.superlink.stop()

    def describe(self) -> str:
        pids = ", ".join(
            f"{name} {p.pid} (launcher {self.launchers.get(name, '-')})"
            for name, p in self.supernodes.items()
        )
        superlink = self.superlink.pid if self.superlink else "-"
        return f"SuperLink {self.address} (pid {superlink}); SuperNodes: {pids}"

    def _write_node_config(self, spec: HospitalNodeSpec) -> Path:
        """The node.toml the SuperNode reads, with absolute paths whatever its working directory,
        and, unless the spec says otherwise, the node's share of this machine's cores."""
        path = self.workdir / "nodes" / f"{spec.hospital}.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        absolute = dataclasses.replace(
            spec,
            data_path=spec.data_path.resolve(),
            state_dir=spec.state_dir.resolve(),
            policy_path=spec.policy_path.resolve(),
            cpu_threads=spec.cpu_threads or self.cpu_threads_per_node,
        )
        path.write_text(absolute.to_toml(), encoding="utf-8")
        return path

    def _launcher_pids_file(self) -> Path:
        return self.workdir / "nodes" / "launcher-pids.json"

    def _forked_launchers(self) -> dict[str, int]:
        """Each hospital's launcher pid, once the launchers' host has forked them all."""
        try:
            text = self._launcher_pids_file().read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        return {hospital: int(pid) for hospital, pid in json.loads(text).items()}

    def _launcher_log(self, hospital: str) -> Path:
        return self.workdir / "logs" / f"launcher-{hospital}.log"

    def _launcher_ready_file(self, hospital: str) -> Path:
        return self.workdir / "nodes" / f"{hospital}.launcher-ready"

    def _unready_launchers(self) -> list[str]:
        return [
            spec.hospital
            for spec in self.hospitals
            if not self._launcher_ready_file(spec.hospital).exists()
        ]

    def _write_cli_config(self) -> None:
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "{self.address}"\ninsecure = true\n',
            encoding="utf-8",
        )

    def _raise_if_exited(self) -> None:
        for process in [self.superlink, *self.supernodes.values(), self.launcher_host]:
            if process is not None and not process.alive():
                raise RuntimeError(
                    f"{process.name} exited with code {process.popen.returncode} during start-up; "
                    f"see its log {process.log_path}"
                )
        forked = self._forked_launchers()
        for hospital in self._unready_launchers():
            if hospital in forked and not process_exists(forked[hospital]):
                raise RuntimeError(
                    f"{hospital}'s launcher exited during start-up; see its log "
                    f"{self._launcher_log(hospital)} and launchers.log beside it"
                )
