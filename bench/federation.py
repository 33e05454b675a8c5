"""Measures 2, 4 and 7: HE round vs plaintext round, framework overhead per round, and how a real
federation scales.

A real local Flower deployment (one SuperLink, one SuperNode per hospital, each a separate process
tree) runs a study with DP-SGD and CKKS on synthetic hospitals. From each round the aggregator
reports: its wall time (`seconds`) and each hospital's own training time (`train_seconds`).

Overhead and scale (logistic regression): the framework's overhead is what the round costs beyond
the slowest hospital's training, `seconds − max(train_seconds)`: process start-up, messaging, HE
encryption and aggregation, evaluation. Meanwhile a sampler records each hospital's RSS: its
SuperNode, its ClientApp launcher and the launcher's task worker and forked tasks. The hospitals
share this machine, so their launchers share one preload of the ClientApp's modules
(hospitals/launcher_host.py); its size is reported beside the memory per hospital, since a
hospital alone on its machine holds it by itself.

HE vs plaintext (an MLP of about a million parameters): on the same SuperNodes, the same study runs
as the product's app and then as the plaintext baseline of bench/plaintext (the same round work
with the model in the clear); the ratio of their median round times is what HE costs a round.
"""

from __future__ import annotations

import math
import shutil
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil
from matplotlib.figure import Figure

from bench import plaintext
from bench.consortium import MAX_LIFETIME_EPSILON, SyntheticCohort, synthetic_consortium
from bench.core import Goal, SuiteResult, Table
from demo.setup import Consortium, DemoSettings
from federation.control import APP_DIR
from federation.deployment import LocalFederation
from federation.runner import RunOutcome, StudyRequest, follow, write_run_config
from federation.superlink import PULL_WAIT_S
from hospitals import wire
from hospitals.models import ModelSpec, build_model, parameter_count
from hospitals.protocol import canonical_json

STUDY_ID = "bench-federation"
# (hospitals, rounds): 3 → 50 hospitals, as the issue asks; on 2 cores the 50-hospital case takes
# about 2 minutes, 45 s of it start-up. Four rounds each, so that every median holds two rounds
# (with three, 30 hospitals measured 5.0 and 6.0 s in two runs). Then 10 hospitals again: the
# goals at 10 (overhead, and the scale goal's reference) take the mean of the runs before and
# after the larger cases, so that the machine's drift over those minutes weighs on both sides of
# the scale goal. Judged on the first run alone, one full run's 10 hospitals measured 1.23 s a
# round, and 1.48 and 1.57 s in runs around a 50-hospital one minutes later: 1.43× against
# 1.13-1.20× per hospital.
FULL_CASES = ((3, 4), (10, 4), (30, 4), (50, 4), (10, 4))
QUICK_CASES = ((2, 1),)
ROWS_PER_HOSPITAL = 300
TEST_ROWS = 100
SEED = 11
OVERHEAD_GOAL_S = 0.5
OVERHEAD_GOAL_HOSPITALS = 10
# From the issue: "HE round ≤ 1.05× the plaintext round at 1M parameters and 10 hospitals" (the
# full run's comparison case) and "50 hospitals in one federation on this machine, round time
# growing linearly": a round's seconds per hospital at 50 within LINEAR_TOLERANCE of those at 10
# (single runs here vary by about ±10%).
HE_ROUND_GOAL_RATIO = 1.05
SCALE_GOAL_HOSPITALS = 50
LINEAR_TOLERANCE = 0.25
ROUND_TIMEOUT_S = 900
CONNECT_TIMEOUT_S = 300.0
RUN_TIMEOUT_S = 1800.0
MEMORY_SAMPLE_S = 0.5
# cpu_by_part's parts that run at a hospital.
HOSPITAL_PARTS = ("SuperNodes", "launchers", "ClientApp tasks")
MIB = 2**20
GIB = 2**30
# What one hospital's processes take from this machine's memory, until a case of this run has
# measured it (~220 MiB measured at 10 hospitals, ~160 at 50): its SuperNode ~90 MiB, its
# launcher and tasks the pages they write beside the shared preload. A case that would not fit is
# skipped, not swapped.
MEMORY_PER_HOSPITAL_MIB = 250
# A larger case needs a little more per hospital than a smaller one measured: more tasks at once.
MEASURED_MEMORY_MARGIN = 1.2
# A node waits far longer than it works: between rounds, and between studies for days. After its
# study, each case measures its idle processes' CPU over a window, once the last run's have quieted.
IDLE_SETTLE_S = 2.0
IDLE_WINDOW_S = 20.0
QUICK_IDLE_WINDOW_S = 2.0
# cpu_by_part's parts that are measured idle. A task's CPU counts once its launcher reaps it, which
# can be during the window (the final evaluation's tasks): none runs while idle, so tasks are out.
IDLE_NODE_PARTS = ("SuperNodes", "launchers")
IDLE_PARTS = (*IDLE_NODE_PARTS, "SuperLink")
# The parts whose CPU the HE vs plaintext comparison shows side by side (launchers barely work).
COMPARED_CPU_PARTS = ("SuperNodes", "ClientApp tasks", "SuperLink", "ServerApp")


@dataclass(frozen=True)
class ComparisonCase:
    """HE vs plaintext: the catalog MLP with these hidden layers, on the synthetic hospitals, run
    as `pairs` pairs of studies (HE, then plaintext) one after another on one federation."""

    hospitals: int
    rounds: int
    hidden: tuple[int, ...]
    pairs: int = 1


# The case: 10 hospitals, an MLP of 1,061,889 parameters on the 10 synthetic features.
# Six rounds, so that the medians have four rounds that are neither the first nor the last: with
# two, one slow round weighed half the median (round 2 holds the runner's first read of Flower's
# status, a `flwr` process of about 1 CPU-s, since round 1 is reported only after it). Three
# pairs, alternating: a single pair measured 1.48, 1.37 and 1.23 in three runs.
FULL_COMPARISON = ComparisonCase(hospitals=10, rounds=6, hidden=(1024, 1024), pairs=3)
QUICK_COMPARISON = ComparisonCase(hospitals=3, rounds=2, hidden=(64,))


@dataclass
class MemorySampler:
    """Samples in the background each hospital's processes (its SuperNode, its launcher and the
    launcher's task worker and forked ClientApp tasks) and the machine's available memory."""

    pids: dict[str, tuple[int, ...]]
    peaks: dict[str, int] = field(default_factory=dict)  # RSS of each hospital's processes
    lowest_available: int = field(default_factory=lambda: psutil.virtual_memory().available)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            for hospital, rss in rss_by_tree(self.pids).items():
                self.peaks[hospital] = max(self.peaks.get(hospital, 0), rss)
            self.lowest_available = min(self.lowest_available, psutil.virtual_memory().available)
            self._stop.wait(MEMORY_SAMPLE_S)


def rss_by_tree(roots: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """For each name, the RSS of its root processes and all their descendants.

    One pass over the system's processes: asking psutil for each root's children reads every
    process's /proc entry per root, which with 50 hospitals (100 roots, ~150 processes) took a
    good part of a core every sample, beside the federation it measures.
    """
    children: dict[int, list[int]] = defaultdict(list)
    rss: dict[int, int] = {}
    for process in psutil.process_iter(["ppid", "memory_info"]):
        children[process.info["ppid"]].append(process.pid)
        memory = process.info["memory_info"]  # None for a process that exited meanwhile
        rss[process.pid] = memory.rss if memory else 0
    totals: dict[str, int] = {}
    for name, pids in roots.items():
        tree: set[int] = set()
        pending = list(pids)
        while pending:
            pid = pending.pop()
            if pid not in tree:
                tree.add(pid)
                pending.extend(children.get(pid, ()))
        totals[name] = sum(rss.get(pid, 0) for pid in tree)
    return totals


def own_and_reaped_cpu_s(pid: int) -> tuple[float, float]:
    """CPU seconds a process used so far, and those of its children it has reaped."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0, 0.0
    return times.user + times.system, times.children_user + times.children_system


def live_children_cpu_s(parents: Iterable[int]) -> float:
    """CPU seconds so far of the processes that `parents` run now (launchers' task workers and
    tasks), in one pass over the system's processes, as `rss_by_tree` reads them."""
    wanted = set(parents)
    total = 0.0
    for process in psutil.process_iter(["ppid", "cpu_times"]):
        times = process.info["cpu_times"]  # None for a process that exited meanwhile
        if process.info["ppid"] in wanted and times is not None:
            total += times.user + times.system
    return total


def serverapp_cpu_s(superlink_pid: int) -> float:
    """CPU seconds so far of the SuperLink's children, Flower's SuperExec, and of the ServerApps
    they start, one per run: those it runs now and those it has reaped."""
    try:
        execs = [child.pid for child in psutil.Process(superlink_pid).children()]
    except psutil.Error:
        return 0.0
    return sum(sum(own_and_reaped_cpu_s(pid)) for pid in execs) + live_children_cpu_s(execs)


def cpu_by_part(federation: LocalFederation) -> dict[str, float]:
    """CPU seconds so far of each part of the deployment. ClientApp tasks count in the task
    worker or forked child that runs them, and again once a launcher has reaped a child, as a
    ServerApp does once its SuperExec has: a difference of two readings counts each CPU second
    once."""
    supernodes = [own_and_reaped_cpu_s(p.pid) for p in federation.supernodes.values()]
    launchers = [own_and_reaped_cpu_s(pid) for pid in federation.launchers.values()]
    superlink = federation.superlink
    return {
        "SuperNodes": sum(own + reaped for own, reaped in supernodes),
        "launchers": sum(own for own, _ in launchers),
        "ClientApp tasks": sum(reaped for _, reaped in launchers)
        + live_children_cpu_s(federation.launchers.values()),
        "SuperLink": own_and_reaped_cpu_s(superlink.pid)[0] if superlink else 0.0,
        "ServerApp": serverapp_cpu_s(superlink.pid) if superlink else 0.0,
    }


def steady_median(rounds: Sequence[dict[str, Any]], key: str) -> float | None:
    """The median over the rounds between the first and the last: round 1 also waits for
    processes to start, and the last round's seconds also hold the final evaluation. With fewer
    than three rounds, over rounds 2 onwards, or round 1 when it is the only one."""
    steady = [r[key] for r in rounds[1:-1]] or [r[key] for r in rounds[1:]]
    values = steady or [r[key] for r in rounds]
    return statistics.median(values) if values else None


@dataclass(frozen=True)
class CpuWindow:
    """CPU seconds of each of cpu_by_part's parts over `rounds` rounds' worth of a run."""

    cpu_s: dict[str, float]
    rounds: float

    @property
    def per_round(self) -> dict[str, float]:
        return {part: s / self.rounds for part, s in self.cpu_s.items()} if self.rounds else {}

    @property
    def bound_round_s(self) -> float | None:
        """Every part's CPU per round divided among this machine's cores: the least a round can
        take while all of them share these cores, however little any of them waits."""
        per_round = self.per_round
        return sum(per_round.values()) / (psutil.cpu_count() or 1) if per_round else None


@dataclass(frozen=True)
class CpuMark:
    at: float  # time.monotonic()
    cpu_s: dict[str, float]  # cpu_by_part


class CpuMarks:
    """cpu_by_part as a run starts, as each round's report is seen, and as the run ends."""

    def __init__(self, federation: LocalFederation) -> None:
        self._federation = federation
        self.start = self._mark()
        self.reported: dict[int, CpuMark] = {}
        self.end = self.start

    def on_event(self, event: dict[str, Any]) -> None:
        if event["event"] == "round":
            self.reported[event["round"]] = self._mark()

    def finish(self) -> None:
        self.end = self._mark()

    def steady(self, rounds: int, round_s: float | None) -> CpuWindow:
        """Between the reports of round 1 and of the second-to-last round.

        Round r is reported once round r + 1's replies are in, so the window holds neither round
        1's work (start-up, each hospital's noise calibration) nor the final evaluation. Reports
        are seen when `follow` polls, which a slow status check can delay until two arrive
        together, so the window counts as many rounds as its length holds median rounds
        (`round_s`). The whole run, when it has fewer than three rounds or the window is shorter
        than half a round.
        """
        first, last = self.reported.get(1), self.reported.get(rounds - 1)
        if rounds >= 3 and first and last and round_s and last.at - first.at >= round_s / 2:
            counted = (last.at - first.at) / round_s
        else:
            first, last, counted = self.start, self.end, rounds
        return CpuWindow(
            {part: last.cpu_s[part] - first.cpu_s[part] for part in last.cpu_s}, counted
        )

    def _mark(self) -> CpuMark:
        return CpuMark(time.monotonic(), cpu_by_part(self._federation))


@dataclass(frozen=True)
class ScaleResult:
    hospitals: int
    rounds: list[dict[str, Any]]  # per round: seconds, slowest train, overhead, train per hospital
    peak_rss_mib: dict[str, float]
    # The machine's memory the federation took, per hospital: what its available memory lost
    # from before start-up to its lowest. Unlike RSS, a page that processes share counts once.
    memory_per_hospital_mib: float
    # RSS of the process all launchers fork from: the modules they share here, and that a
    # hospital's launcher on a machine of its own imports for itself.
    shared_preload_mib: float
    startup_s: float
    total_s: float
    cpu: CpuWindow  # CpuMarks.steady
    idle_ms_per_s: dict[str, float]  # idle_cpu: IDLE_PARTS, with no run in progress

    @property
    def median_seconds(self) -> float | None:
        return steady_median(self.rounds, "seconds")

    @property
    def seconds_per_hospital(self) -> float | None:
        return None if self.median_seconds is None else self.median_seconds / self.hospitals

    @property
    def median_slowest_train(self) -> float | None:
        return steady_median(self.rounds, "slowest_train_s")

    @property
    def median_overhead(self) -> float | None:
        return steady_median(self.rounds, "overhead_s")

    @property
    def overhead_goal_met(self) -> bool | None:
        """The overhead goal's verdict on this run alone: None unless it has the goal's
        hospitals and steady rounds."""
        if self.hospitals != OVERHEAD_GOAL_HOSPITALS or self.median_overhead is None:
            return None
        return within_overhead_goal(self.median_overhead)

    @property
    def cpu_s_per_round(self) -> dict[str, float]:
        return self.cpu.per_round

    @property
    def hospitals_cpu_s_per_round(self) -> float | None:
        """What every hospital's SuperNode, launcher and tasks used, per round."""
        per_round = self.cpu_s_per_round
        return sum(per_round[part] for part in HOSPITAL_PARTS) if per_round else None

    @property
    def max_peak_rss_mib(self) -> float | None:
        return max(self.peak_rss_mib.values()) if self.peak_rss_mib else None

    @property
    def idle_node_ms_per_s(self) -> float | None:
        """What one hospital's idle processes (SuperNode, launcher) use, on average."""
        if not self.idle_ms_per_s:
            return None
        return sum(self.idle_ms_per_s[part] for part in IDLE_NODE_PARTS) / self.hospitals


@dataclass(frozen=True)
class StudyRun:
    """One study's reported rounds and its parts' CPU over its steady rounds (CpuMarks.steady)."""

    rounds: list[dict[str, Any]]  # round_figures
    cpu: CpuWindow

    def median(self, key: str) -> float | None:
        """`key`'s median over the steady rounds (steady_median)."""
        return steady_median(self.rounds, key)


@dataclass(frozen=True)
class ComparisonPair:
    """The same study under HE and, right after, in the clear (bench/plaintext)."""

    he: StudyRun
    plaintext: StudyRun

    @property
    def ratio(self) -> float | None:
        he, clear = self.he.median("seconds"), self.plaintext.median("seconds")
        return None if he is None or not clear else he / clear

    def figures(self) -> dict[str, Any]:
        return {
            "ratio": self.ratio,
            **{
                side: {
                    "median_round_s": run.median("seconds"),
                    "median_slowest_train_s": run.median("slowest_train_s"),
                    "cpu_s_per_round": run.cpu.per_round,
                    "rounds": run.rounds,
                }
                for side, run in (("he", self.he), ("plaintext", self.plaintext))
            },
        }


@dataclass(frozen=True)
class Comparison:
    """A case's pairs of studies, HE and plaintext, on one federation."""

    case: ComparisonCase
    parameters: int
    pairs: list[ComparisonPair]

    @property
    def ratios(self) -> list[float]:
        return [ratio for pair in self.pairs if (ratio := pair.ratio) is not None]

    @property
    def ratio(self) -> float | None:
        """The median over pairs of each pair's HE / plaintext ratio."""
        return statistics.median(self.ratios) if self.ratios else None

    def median_over_pairs(self, side: str, key: str) -> float | None:
        """The median over pairs of one side's steady median of `key`."""
        return _median_of_present(getattr(pair, side).median(key) for pair in self.pairs)

    def median_cpu_bound_over_pairs(self, side: str) -> float | None:
        """The median over pairs of one side's CpuWindow.bound_round_s."""
        return _median_of_present(getattr(pair, side).cpu.bound_round_s for pair in self.pairs)

    def median_cpu_over_pairs(self, side: str, part: str) -> float | None:
        """The median over pairs of one side's CPU seconds per round of `part`."""
        return _median_of_present(
            getattr(pair, side).cpu.per_round.get(part) for pair in self.pairs
        )

    def figures(self) -> dict[str, Any]:
        return {
            "hospitals": self.case.hospitals,
            "hidden": list(self.case.hidden),
            "parameters": self.parameters,
            "he_to_plaintext_round_ratio": self.ratio,
            "ratio_min": min(self.ratios, default=None),
            "ratio_max": max(self.ratios, default=None),
            "pairs": [pair.figures() for pair in self.pairs],
        }


def _median_of_present(values: Iterable[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def bench_consortium(
    workdir: Path,
    *,
    hospitals: int,
    rounds: int,
    model: ModelSpec | None = None,
    studies: int = 1,
) -> Consortium:
    """The synthetic consortium, its nodes' budgets allowing `studies` runs of the study."""
    settings = DemoSettings(
        out_dir=workdir,
        rounds=rounds,
        min_hospitals=hospitals,
        round_timeout_s=ROUND_TIMEOUT_S,
        seed=SEED,
    )
    cohort = SyntheticCohort(rows=(ROWS_PER_HOSPITAL,) * hospitals, test_rows=TEST_ROWS)
    return synthetic_consortium(
        settings,
        study_id=STUDY_ID,
        cohort=cohort,
        model=model,
        max_lifetime_epsilon=max(MAX_LIFETIME_EPSILON, studies * settings.target_epsilon),
    )


def study_request(consortium: Consortium, results_path: Path) -> StudyRequest:
    return StudyRequest(
        protocol_json=canonical_json(consortium.protocol.document),
        aggregator_context=consortium.key.aggregator_context().to_bytes(),
        results_path=results_path,
        join_timeout_s=int(CONNECT_TIMEOUT_S),
        weight_unit=consortium.first_weight_unit(),
    )


@contextmanager
def started(workdir: Path, consortium: Consortium) -> Iterator[LocalFederation]:
    federation = LocalFederation(workdir=workdir / "federation", hospitals=consortium.hospitals)
    try:
        federation.start(connect_timeout_s=CONNECT_TIMEOUT_S)
        yield federation
    finally:
        federation.stop()


def run_app(
    federation: LocalFederation,
    request: StudyRequest,
    *,
    app_dir: Path,
    on_event: Callable[[dict[str, Any]], None] = lambda event: None,
) -> RunOutcome:
    """Run the study as the app whose manifest is in `app_dir` (federation.runner.run_and_follow
    always submits the product's), to its end; raise if it failed."""
    request.results_path.unlink(missing_ok=True)
    run_config = write_run_config(request, request.results_path.with_suffix(".run-config.toml"))
    run_id = federation.control.submit(run_config, app_dir=app_dir)
    outcome = follow(
        federation.control,
        run_id,
        request.results_path,
        on_event=on_event,
        timeout_s=RUN_TIMEOUT_S,
    )
    if not outcome.status.succeeded:
        raise RuntimeError(
            f"{app_dir.parent.name} run with {len(federation.hospitals)} hospitals failed: "
            f"{outcome.failure_reason}; logs in {federation.workdir / 'logs'}"
        )
    return outcome


def measured_run(federation: LocalFederation, request: StudyRequest, *, app_dir: Path) -> StudyRun:
    """`run_app`, with the CPU of each part of the deployment over the run's steady rounds."""
    marks = CpuMarks(federation)
    outcome = run_app(federation, request, app_dir=app_dir, on_event=marks.on_event)
    marks.finish()
    rounds = round_figures(outcome)
    return StudyRun(rounds, marks.steady(len(rounds), round_s=steady_median(rounds, "seconds")))


def round_figures(outcome: RunOutcome) -> list[dict[str, Any]]:
    per_round = []
    for event in outcome.rounds:
        trains = {h["hospital"]: float(h["train_seconds"]) for h in event["hospitals"]}
        slowest = max(trains.values())
        per_round.append(
            {
                "round": event["round"],
                "seconds": float(event["seconds"]),
                "slowest_train_s": slowest,
                "overhead_s": float(event["seconds"]) - slowest,
                "participants": len(event["participants"]),
                "update_bytes": max(h["bytes_up"] for h in event["hospitals"]),
                "train_s": trains,
            }
        )
    return per_round


def memory_shortfall(hospitals: int, measured: Sequence[ScaleResult] = ()) -> str | None:
    """Why `hospitals` would not fit in this machine's available memory, or None if they do:
    each takes what the largest `measured` case took per hospital (with a margin), or
    MEMORY_PER_HOSPITAL_MIB before any was measured."""
    largest = max(measured, key=lambda result: result.hospitals, default=None)
    per_hospital_mib = (
        MEMORY_PER_HOSPITAL_MIB
        if largest is None
        else largest.memory_per_hospital_mib * MEASURED_MEMORY_MARGIN
    )
    needed = hospitals * per_hospital_mib * MIB
    available = psutil.virtual_memory().available
    if available >= needed:
        return None
    return (
        f"{hospitals} hospitals skipped: they need about {needed / GIB:.0f} GiB "
        f"({per_hospital_mib:.0f} MiB each) and {available / GIB:.1f} GiB is available"
    )


def idle_cpu(
    federation: LocalFederation,
    *,
    window_s: float,
    settle_s: float = IDLE_SETTLE_S,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> dict[str, float]:
    """Milliseconds of CPU per second that each of `IDLE_PARTS` uses while no run is in
    progress: over `window_s`, after `settle_s` for the last run's processes to finish."""
    sleep(settle_s)
    before, began = cpu_by_part(federation), monotonic()
    sleep(window_s)
    after, elapsed_s = cpu_by_part(federation), monotonic() - began
    return {part: 1000 * (after[part] - before[part]) / elapsed_s for part in IDLE_PARTS}


def measure(
    workdir: Path, *, hospitals: int, rounds: int, idle_window_s: float = IDLE_WINDOW_S
) -> ScaleResult:
    consortium = bench_consortium(workdir, hospitals=hospitals, rounds=rounds)
    request = study_request(consortium, workdir / "results.jsonl")
    available_before = psutil.virtual_memory().available
    began = time.monotonic()
    with started(workdir, consortium) as federation:
        startup_s = time.monotonic() - began
        assert federation.launcher_host is not None  # started
        shared_preload = psutil.Process(federation.launcher_host.pid).memory_info().rss
        sampler = MemorySampler(
            {
                name: (node.pid, federation.launchers[name])
                for name, node in federation.supernodes.items()
            }
        )
        sampler.start()
        try:
            study = measured_run(federation, request, app_dir=APP_DIR)
        finally:
            sampler.stop()
        idle = idle_cpu(federation, window_s=idle_window_s)
    return ScaleResult(
        hospitals=hospitals,
        rounds=study.rounds,
        peak_rss_mib={name: rss / MIB for name, rss in sorted(sampler.peaks.items())},
        memory_per_hospital_mib=(available_before - sampler.lowest_available) / hospitals / MIB,
        shared_preload_mib=shared_preload / MIB,
        startup_s=startup_s,
        total_s=time.monotonic() - began,
        cpu=study.cpu,
        idle_ms_per_s=idle,
    )


def compare(workdir: Path, case: ComparisonCase) -> Comparison:
    """Both apps on one federation, alternating, HE first: same consortium, data, model, DP and
    rounds. Alternating spreads a drift of the machine's state (caches, memory) over both."""
    model = ModelSpec(name="mlp", hyperparameters={"hidden": case.hidden})
    consortium = bench_consortium(
        workdir,
        hospitals=case.hospitals,
        rounds=case.rounds,
        model=model,
        studies=2 * case.pairs,
    )
    protocol = consortium.protocol

    def study(federation: LocalFederation, app_dir: Path, results_path: Path) -> StudyRun:
        return measured_run(federation, study_request(consortium, results_path), app_dir=app_dir)

    with plaintext.loadable(), started(workdir, consortium) as federation:
        pairs = [
            ComparisonPair(
                he=study(federation, APP_DIR, workdir / f"he-{pair}.jsonl"),
                plaintext=study(federation, plaintext.APP_DIR, workdir / f"plaintext-{pair}.jsonl"),
            )
            for pair in range(case.pairs)
        ]
    return Comparison(
        case=case,
        parameters=parameter_count(
            build_model(protocol.model, n_features=protocol.schema.n_features, seed=protocol.seed)
        ),
        pairs=pairs,
    )


def run(*, quick: bool) -> SuiteResult:
    cases = QUICK_CASES if quick else FULL_CASES
    idle_window_s = QUICK_IDLE_WINDOW_S if quick else IDLE_WINDOW_S
    root = Path(tempfile.mkdtemp(prefix="cohort-bench-federation-"))
    results: list[ScaleResult] = []
    skipped: list[str] = []
    failed = False
    for hospitals, rounds in cases:
        if shortfall := memory_shortfall(hospitals, results):
            skipped.append(shortfall)
            continue
        try:
            results.append(
                measure(
                    root / f"n{hospitals}",
                    hospitals=hospitals,
                    rounds=rounds,
                    idle_window_s=idle_window_s,
                )
            )
        except RuntimeError as failure:
            # Past the goal's size a case can exhaust a small machine; the others still count.
            if hospitals <= OVERHEAD_GOAL_HOSPITALS:
                raise
            skipped.append(f"{hospitals} hospitals failed: {failure}")
            failed = True
    comparison = compare(root / "he-vs-plaintext", QUICK_COMPARISON if quick else FULL_COMPARISON)
    if not failed:
        shutil.rmtree(root, ignore_errors=True)  # kept after a failure: its logs say why
    return SuiteResult(
        name="federation",
        tables=[overhead_table(results, skipped), comparison_table(comparison)],
        figures={
            "rows_per_hospital": ROWS_PER_HOSPITAL,
            "model": "logistic_regression",
            "cases": [figures(result) for result in results],
            "skipped": skipped,
            "he_vs_plaintext": comparison.figures(),
        },
        plots={"federation-overhead.png": overhead_plot(results)},
        goals=[
            overhead_goal(results),
            he_round_goal(comparison),
            scale_goal(results, skipped),
        ],
    )


def within_overhead_goal(overhead_s: float) -> bool:
    return overhead_s <= OVERHEAD_GOAL_S


def _case(results: Sequence[ScaleResult], hospitals: int) -> ScaleResult | None:
    return next((r for r in results if r.hospitals == hospitals), None)


def _runs(results: Sequence[ScaleResult], hospitals: int) -> list[ScaleResult]:
    """Every run of `hospitals` hospitals, in the order they ran."""
    return [r for r in results if r.hospitals == hospitals]


def _both(values: Iterable[float], spec: str, unit: str = "") -> str:
    return " and ".join(f"{value:{spec}}{unit}" for value in values)


def overhead_goal(results: Sequence[ScaleResult]) -> Goal:
    goal = Goal(
        name="Framework overhead",
        target=f"≤ {OVERHEAD_GOAL_S:g} s per round at {OVERHEAD_GOAL_HOSPITALS} hospitals",
        measured="not measured",
        met=None,
    )
    cases = _runs(results, OVERHEAD_GOAL_HOSPITALS)
    overheads = [case.median_overhead for case in cases if case.median_overhead is not None]
    if not overheads:
        return goal
    rounds = [case.median_seconds for case in cases if case.median_seconds is not None]
    bounds = [case.cpu.bound_round_s for case in cases if case.cpu.bound_round_s is not None]
    cpu_bound = f"; all CPU ÷ cores {_both(bounds, '.2f', ' s')}" if bounds else ""
    mean = statistics.mean(overheads)
    measured = (
        f"{_both(overheads, '.2f', ' s')} (median round {_both(rounds, '.2f', ' s')}{cpu_bound})"
    )
    if len(overheads) > 1:
        measured = f"{mean:.2f} s: the mean of {measured}"
    return replace(goal, measured=measured, met=within_overhead_goal(mean))


def he_round_goal(comparison: Comparison) -> Goal:
    ratios, case = comparison.ratios, comparison.case
    goal = Goal(
        name="HE round",
        target=f"≤ {HE_ROUND_GOAL_RATIO:g}× the plaintext round, {FULL_COMPARISON.hospitals} "
        "hospitals, 1M parameters",
        measured="not measured",
        met=None,
    )
    if comparison.ratio is None:
        return goal
    return replace(
        goal,
        measured=f"{comparison.ratio:.2f}× (pairs {min(ratios):.2f}–{max(ratios):.2f}), "
        f"{case.hospitals} hospitals, {comparison.parameters:,} parameters",
        met=comparison.ratio <= HE_ROUND_GOAL_RATIO,
    )


def scale_goal(results: Sequence[ScaleResult], skipped: Sequence[str]) -> Goal:
    goal = Goal(
        name="Scale",
        target=f"{SCALE_GOAL_HOSPITALS} hospitals in one federation, round time growing "
        f"linearly (per hospital within {LINEAR_TOLERANCE:.0%} of {OVERHEAD_GOAL_HOSPITALS}'s)",
        measured="; ".join(s for s in skipped if s.startswith(f"{SCALE_GOAL_HOSPITALS} ")),
        met=None,
    )
    bases = [
        case.seconds_per_hospital
        for case in _runs(results, OVERHEAD_GOAL_HOSPITALS)
        if case.seconds_per_hospital is not None
    ]
    largest = _case(results, SCALE_GOAL_HOSPITALS)
    at_largest = largest.seconds_per_hospital if largest else None
    if not bases or at_largest is None:
        return replace(goal, measured=goal.measured or "not measured")
    growth = at_largest / statistics.mean(bases)
    return replace(
        goal,
        measured=f"{at_largest:.3f} s per hospital at {SCALE_GOAL_HOSPITALS}, "
        f"{_both(bases, '.3f')} at {OVERHEAD_GOAL_HOSPITALS} ({growth:.2f}×)",
        met=growth <= 1 + LINEAR_TOLERANCE,
    )


def figures(result: ScaleResult) -> dict[str, Any]:
    return {
        "hospitals": result.hospitals,
        "startup_s": round(result.startup_s, 3),
        "total_s": round(result.total_s, 3),
        "rounds": result.rounds,
        "median_round_s": result.median_seconds,
        "median_slowest_train_s": result.median_slowest_train,
        "median_overhead_s": result.median_overhead,
        "peak_rss_mib": result.peak_rss_mib,
        "memory_per_hospital_mib": round(result.memory_per_hospital_mib, 1),
        "shared_preload_mib": round(result.shared_preload_mib, 1),
        "hospitals_cpu_s_per_round": result.hospitals_cpu_s_per_round,
        "cpu_s_per_round": result.cpu_s_per_round,
        "cpu_rounds_counted": round(result.cpu.rounds, 2),
        "cpu_bound_round_s": result.cpu.bound_round_s,
        "idle_cpu_ms_per_s": {part: round(ms, 2) for part, ms in result.idle_ms_per_s.items()},
        "idle_node_ms_per_s": _rounded(result.idle_node_ms_per_s),
        "cpu_count": psutil.cpu_count(),
    }


def _rounded(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def overhead_table(results: list[ScaleResult], skipped: Sequence[str] = ()) -> Table:
    rows: list[list[str | int | float | None]] = []
    for r in results:
        first = r.rounds[0] if r.rounds else None
        goal = None if r.overhead_goal_met is None else ("yes" if r.overhead_goal_met else "no")
        rows.append(
            [
                r.hospitals,
                len(r.rounds),
                _rounded(r.median_seconds),
                _rounded(r.seconds_per_hospital, 3),
                _rounded(r.median_slowest_train),
                _rounded(r.median_overhead),
                _rounded(r.cpu.bound_round_s),
                _rounded(r.hospitals_cpu_s_per_round),
                " / ".join(f"{r.cpu_s_per_round[part]:.2f}" for part in HOSPITAL_PARTS)
                if r.rounds
                else None,
                _rounded(r.cpu_s_per_round.get("SuperLink")),
                _rounded(r.cpu_s_per_round.get("ServerApp")),
                goal,
                _rounded(first["seconds"]) if first else None,
                _rounded(first["overhead_s"]) if first else None,
                _rounded(r.max_peak_rss_mib, 0),
                _rounded(r.memory_per_hospital_mib, 0),
                _rounded(r.shared_preload_mib, 0),
                _idle(r),
                _rounded(r.startup_s, 1),
            ]
        )
    return Table(
        title="Framework overhead per round = round seconds − slowest hospital's training "
        f"(goal: ≤ {OVERHEAD_GOAL_S} s at {OVERHEAD_GOAL_HOSPITALS} hospitals)",
        columns=[
            "hospitals",
            "rounds",
            "median round s",
            "round s / hospital",
            "median slowest train s",
            "overhead s",
            "all CPU ÷ cores s / round",
            "hospitals' CPU s / round",
            "of it: " + " / ".join(HOSPITAL_PARTS),
            "SuperLink CPU s / round",
            "ServerApp CPU s / round",
            f"goal met ({OVERHEAD_GOAL_HOSPITALS})?",
            "round 1 s",
            "round 1 overhead s",
            "peak RSS / hospital MiB",
            "memory / hospital MiB",
            "shared preload MiB",
            "idle CPU ms/s: node / SuperLink",
            "start-up s",
        ],
        rows=rows,
        notes=[
            "Real local Flower federation: SuperLink + one SuperNode per hospital, DP-SGD "
            f"(opacus) + CKKS; logistic regression, {ROWS_PER_HOSPITAL} synthetic rows per "
            "hospital, every process on this one machine.",
            "Medians are over the rounds between the first and the last: round 1 (shown apart) "
            "also waits for the ServerApp and first ClientApps to start, and the last round's "
            "seconds also hold the final evaluation.",
            f"The full run measures {OVERHEAD_GOAL_HOSPITALS} hospitals twice, before and after "
            "the larger cases: the overhead and scale goals take the mean of both, so that the "
            "machine's drift over those minutes weighs on both sides of the scale goal.",
            "Each ClientApp task runs in its hospital's task worker, forked once from the warm "
            "launcher (or, while the worker is busy, forked for the task), not started fresh; "
            "the launchers are forked from one process that imported the ClientApp's modules once "
            "(cohort-launchers); the SuperLink (cohort-superlink) holds a SuperNode's empty pull "
            f"until a message for it is complete (up to {PULL_WAIT_S:g} s), where Flower's "
            "SuperNode would poll every 3 s; SuperNodes (cohort-supernode) hold a launcher's "
            "request until a task is pending. Each node's tasks use its share of the cores "
            "(cpu-threads). A global model or update of at most "
            f"{wire.INLINE_MAX_BYTES // 2**20} MiB travels inside its message's ConfigRecord: "
            "three Flower objects a message, each one HTTP request per hop, not six. "
            "A round is one exchange per hospital (evaluate the model it "
            "receives, then train), and the last round adds the final evaluation; the "
            "overhead also holds every hospital's HE encryption and decryption (once per global "
            "model) and its evaluation, all sharing this machine's cores.",
            "Hospitals' CPU s / round: CPU time of every hospital's SuperNode, launcher and "
            "ClientApp tasks per round: their CPU rate from round 1's report to the second-to-last "
            "round's, times the median round (round 1's start-up and noise calibration and the "
            "final evaluation fall outside; the whole run with fewer than three rounds). Divided "
            "by this machine's "
            f"{psutil.cpu_count()} cores it is the part of a round the hospitals' own work "
            "takes when they share one machine, as they do here and not in a consortium. "
            "Split into its parts (a launcher's own CPU apart from its task worker and the tasks "
            "it forked), and the SuperLink's and the ServerApp's beside it (the ServerApp with "
            "the SuperExec that starts it). All CPU ÷ cores: every part's CPU per round divided "
            "among the cores, the least a round can take here however little any part waits: "
            "where it is near the median round, the round is bound by CPU, and only less CPU per "
            "round (or more cores, as hospitals on machines of their own have) shortens it.",
            "Peak RSS: the highest, over hospitals, of a SuperNode's and its launcher's process "
            "trees (with the task worker and forked ClientApp tasks), sampled every "
            f"{MEMORY_SAMPLE_S} s; it "
            "counts the pages they share with other hospitals' processes in full. "
            "Memory / hospital: what the machine's available memory lost from before start-up "
            "to its lowest sample, divided by the hospitals; pages that processes share count "
            "once. A case is skipped when the largest case before it, at this figure "
            f"×{MEASURED_MEMORY_MARGIN:g}, says it would not fit. Shared preload: RSS of the "
            "process every launcher was forked from, after start-up: the modules (torch, Opacus, "
            "TenSEAL, Flower) the launchers share here, which a hospital on a machine of its own "
            "holds besides its memory / hospital.",
            "Idle CPU: milliseconds of CPU per second with no run in progress, measured after the "
            f"study over {IDLE_WINDOW_S:g} s ({QUICK_IDLE_WINDOW_S:g} s in the quick run): a "
            "hospital's node (its SuperNode and launcher, the mean over hospitals), and the "
            "SuperLink. A node waits far longer than it works, between rounds and between "
            "studies.",
            "Start-up s: from launching the processes until every SuperNode is connected and "
            "every launcher serves, the ClientApp's modules imported once for all, on these "
            "cores.",
            "The quick run (2 hospitals, 1 round) has round 1 only. Every process shares this "
            "machine's CPUs, so other load on it inflates the overhead.",
            *skipped,
        ],
    )


def _idle(result: ScaleResult) -> str | None:
    node = result.idle_node_ms_per_s
    if node is None:
        return None
    return f"{node:.2f} / {result.idle_ms_per_s['SuperLink']:.1f}"


def overhead_plot(results: list[ScaleResult]) -> Figure:
    figure = Figure(figsize=(6, 3.5))
    axes = figure.add_subplot()
    counts = [r.hospitals for r in results]
    for values, style, label in (
        ([r.median_seconds for r in results], "o-", "round"),
        ([r.median_slowest_train for r in results], "s--", "slowest training"),
        ([r.median_overhead for r in results], "^-", "overhead"),
    ):
        axes.plot(counts, [math.nan if v is None else v for v in values], style, label=label)
    axes.axhline(OVERHEAD_GOAL_S, color="grey", linestyle=":", label="overhead goal")
    axes.set(xlabel="hospitals", ylabel="seconds (median, first and last rounds left out)")
    axes.legend(fontsize="small")
    axes.grid(alpha=0.3)
    return figure


def _side_by_side(he: float | None, clear: float | None) -> str | None:
    return None if he is None or clear is None else f"{he:.2f} / {clear:.2f}"


def comparison_table(comparison: Comparison) -> Table:
    sides = ("he", "plaintext")
    first = comparison.pairs[0]
    update_bytes = [getattr(first, side).median("update_bytes") for side in sides]
    ratios = comparison.ratios
    return Table(
        title="HE round vs plaintext round: the same study, with and without CKKS",
        columns=[
            "hospitals",
            "parameters",
            "rounds",
            "pairs",
            "HE median round s",
            "plaintext median round s",
            "HE / plaintext",
            "HE / plaintext min–max",
            "HE slowest train s",
            "plaintext slowest train s",
            "HE update MiB",
            "plaintext update MiB",
            *(f"{part} CPU s / round: HE / plaintext" for part in COMPARED_CPU_PARTS),
            "all CPU ÷ cores s / round: HE / plaintext",
        ],
        rows=[
            [
                comparison.case.hospitals,
                comparison.parameters,
                comparison.case.rounds,
                len(comparison.pairs),
                *(_rounded(comparison.median_over_pairs(side, "seconds")) for side in sides),
                _rounded(comparison.ratio),
                f"{min(ratios):.2f}–{max(ratios):.2f}" if ratios else None,
                *(
                    _rounded(comparison.median_over_pairs(side, "slowest_train_s"))
                    for side in sides
                ),
                *(_rounded(None if b is None else b / MIB, 4) for b in update_bytes),
                *(
                    _side_by_side(*(comparison.median_cpu_over_pairs(side, part) for side in sides))
                    for part in COMPARED_CPU_PARTS
                ),
                _side_by_side(*(comparison.median_cpu_bound_over_pairs(side) for side in sides)),
            ]
        ],
        notes=[
            "One real local federation runs the study in pairs, one after another, HE first: "
            "the product's app (DP-SGD, CKKS updates summed at the aggregator) and "
            "bench/plaintext's baseline (the same node checks, data, model, DP-SGD, ledger, "
            "evaluation and messages, with float32 models averaged by numpy, weighted by rows). "
            "The ratio is what HE adds to a round: encryption and decryption at each hospital, "
            "the ciphertexts' size on the wire, and reading and adding them at the aggregator.",
            f"MLP with hidden layers {list(comparison.case.hidden)}, {ROWS_PER_HOSPITAL} "
            "synthetic rows per hospital. Each run's median is over the rounds between the first "
            "(which also waits for processes to start) and the last (which also holds the final "
            "evaluation); each pair's ratio divides its two medians, and the table shows the "
            "median over pairs, with the pairs' lowest and highest ratio.",
            "CPU s / round: each run's CPU per steady round of every hospital's SuperNode, of "
            "their ClientApp tasks, of the SuperLink and of the ServerApp (which reads and sums "
            "the updates), the median over pairs: where the HE round's extra time goes. All CPU "
            "÷ cores: their sum (with the launchers') divided among this machine's cores, the "
            "least a round can take here; where it is near the median round, the round is bound "
            "by CPU.",
            "The issue's case is the full run's: 10 hospitals, about 1M parameters. In the quick "
            "run the model is tiny and HE's share of a round is small beside messaging and "
            "process start-up, so its ratio says little.",
        ],
    )
