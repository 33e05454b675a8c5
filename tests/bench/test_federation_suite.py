"""The federation suite's scale cases: a case this machine cannot hold is skipped, saying why."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from bench import federation


def scale_result(hospitals: int, *, memory_per_hospital_mib: float = 300.0, **fields: Any):
    figures: dict[str, Any] = {
        "rounds": [],
        "peak_rss_mib": {},
        "shared_preload_mib": 480.0,
        "startup_s": 30.0,
        "total_s": 50.0,
        "cpu": federation.CpuWindow({}, rounds=0),
        "idle_ms_per_s": {},
        **fields,
    }
    return federation.ScaleResult(
        hospitals=hospitals, memory_per_hospital_mib=memory_per_hospital_mib, **figures
    )


def test_a_case_that_does_not_fit_in_memory_is_skipped_with_the_reason(monkeypatch):
    available = SimpleNamespace(available=10 * federation.GIB)
    monkeypatch.setattr(federation.psutil, "virtual_memory", lambda: available)

    assert federation.memory_shortfall(40) is None  # 40 × 250 MiB ≈ 9.8 GiB
    assert federation.memory_shortfall(50) == (
        "50 hospitals skipped: they need about 12 GiB (250 MiB each) and 10.0 GiB is available"
    )


def test_once_a_case_ran_the_next_is_sized_by_its_memory_per_hospital(monkeypatch):
    available = SimpleNamespace(available=20 * federation.GIB)
    monkeypatch.setattr(federation.psutil, "virtual_memory", lambda: available)
    measured = [
        scale_result(3, memory_per_hospital_mib=600.0),
        scale_result(30, memory_per_hospital_mib=300.0),
    ]

    # The largest case's 300 MiB, with 20% for more tasks at once: 50 × 360 MiB ≈ 17.6 GiB.
    assert federation.memory_shortfall(50, measured) is None
    assert federation.memory_shortfall(60, measured) == (
        "60 hospitals skipped: they need about 21 GiB (360 MiB each) and 20.0 GiB is available"
    )


def test_skipped_cases_are_named_in_the_overhead_table():
    table = federation.overhead_table([], ["50 hospitals skipped: …"])
    assert table.notes[-1] == "50 hospitals skipped: …"
    assert table.rows == []


def test_the_overhead_table_splits_the_cpu_per_round_by_part(monkeypatch):
    monkeypatch.setattr(federation.psutil, "cpu_count", lambda: 4)
    result = scale_result(
        10,
        rounds=[{"seconds": 6.0, "slowest_train_s": 0.5, "overhead_s": 5.5}] * 2,
        cpu=federation.CpuWindow(
            {
                "SuperNodes": 6.0,
                "launchers": 1.6,
                "ClientApp tasks": 11.0,
                "SuperLink": 5.4,
                "ServerApp": 1.2,
            },
            rounds=2,
        ),
    )

    table = federation.overhead_table([result])
    row = dict(zip(table.columns, table.rows[0], strict=True))

    assert row["hospitals' CPU s / round"] == 9.3
    assert row["of it: SuperNodes / launchers / ClientApp tasks"] == "3.00 / 0.80 / 5.50"
    assert row["SuperLink CPU s / round"] == 2.7
    assert row["ServerApp CPU s / round"] == 0.6
    assert row["all CPU ÷ cores s / round"] == 3.15  # 12.6 CPU-s a round on 4 cores
    assert row["memory / hospital MiB"] == 300
    assert row["shared preload MiB"] == 480


def test_the_overhead_table_shows_a_hospital_nodes_idle_cpu_beside_the_superlinks():
    idle = {"SuperNodes": 7.0, "launchers": 1.0, "SuperLink": 9.24}

    table = federation.overhead_table([scale_result(10, idle_ms_per_s=idle)])
    row = dict(zip(table.columns, table.rows[0], strict=True))

    assert row["idle CPU ms/s: node / SuperLink"] == "0.80 / 9.2"


def test_idle_cpu_is_measured_once_the_last_run_settled(monkeypatch):
    clock = SimpleNamespace(now=100.0, slept=[])

    def sleep(seconds: float) -> None:
        clock.slept.append(seconds)
        clock.now += seconds

    used = iter(
        {"SuperLink": link, "SuperNodes": nodes, "launchers": 0.5, "ClientApp tasks": tasks}
        # The tasks' CPU grows as a launcher reaps the last run's tasks: not idle work.
        for link, nodes, tasks in [(5.0, 1.0, 30.0), (5.2, 1.05, 31.0)]
    )
    monkeypatch.setattr(federation, "cpu_by_part", lambda _federation: next(used))

    idle = federation.idle_cpu(
        None, window_s=20.0, settle_s=2.0, sleep=sleep, monotonic=lambda: clock.now
    )

    assert clock.slept == [2.0, 20.0]  # the CPU counted is the window's, not the settling's
    assert idle == pytest.approx({"SuperNodes": 2.5, "launchers": 0.0, "SuperLink": 10.0})


def test_medians_leave_out_the_first_round_and_the_last_while_others_remain():
    def rounds(*seconds: float) -> list[dict[str, float]]:
        return [{"seconds": s} for s in seconds]

    # Round 1 starts the processes; the last round's seconds hold the final evaluation.
    assert federation.steady_median(rounds(9.0, 3.0, 4.0, 8.0), "seconds") == 3.5
    assert federation.steady_median(rounds(9.0, 3.0, 8.0), "seconds") == 3.0
    assert federation.steady_median(rounds(9.0, 8.0), "seconds") == 8.0
    assert federation.steady_median(rounds(9.0), "seconds") == 9.0
    assert federation.steady_median([], "seconds") is None


def test_cpu_per_round_is_the_rate_between_round_1_and_the_final_evaluation(monkeypatch):
    # At the start, the reports of rounds 1 to 3, and the end: (seconds, SuperLink CPU s).
    marks = iter(
        federation.CpuMark(at, {"SuperLink": used})
        for at, used in [(0.0, 10.0), (20.0, 30.0), (22.0, 36.0), (24.0, 42.0), (30.0, 50.0)]
    )
    monkeypatch.setattr(federation.CpuMarks, "_mark", lambda self: next(marks))
    cpu = federation.CpuMarks(None)
    for number in (1, 2, 3):
        cpu.on_event({"event": "round", "round": number})
    cpu.on_event({"event": "run-finished"})
    cpu.finish()

    # 12 CPU-s over the 4 s between the reports of rounds 1 and 3, which hold four 1 s rounds
    # (not the two the reports' numbers say: seen late, they came closer together).
    assert cpu.steady(4, round_s=1.0).per_round == {"SuperLink": 3.0}
    # Reports seen together (a window under half a round), or too few rounds: the whole run.
    assert cpu.steady(4, round_s=10.0).per_round == {"SuperLink": 10.0}
    assert cpu.steady(2, round_s=2.0).per_round == {"SuperLink": 20.0}


def test_each_hospitals_rss_holds_its_processes_and_their_descendants(tmp_path):
    # A process that starts a child, each holding 50 MiB, as a launcher and its forked task do.
    script = (
        "import subprocess, sys, time\n"
        "block = bytearray(50 * 2**20)\n"
        "if sys.argv[1] == 'parent':\n"
        "    subprocess.Popen([sys.executable, '-c', *sys.argv[2:3], 'child', *sys.argv[2:]])\n"
        "    time.sleep(60)\n"
        "else:\n"
        "    open(sys.argv[3], 'w').close()\n"
        "    time.sleep(60)\n"
    )
    ready = tmp_path / "ready"
    parent = subprocess.Popen([sys.executable, "-c", script, "parent", script, str(ready)])
    try:
        while not ready.exists():
            assert parent.poll() is None
            time.sleep(0.01)
        totals = federation.rss_by_tree({"tree": (parent.pid,), "no process": ()})
        own = psutil.Process(parent.pid).memory_info().rss
    finally:
        for process in psutil.Process(parent.pid).children(recursive=True):
            process.kill()
        parent.kill()
        parent.wait()

    assert totals["no process"] == 0
    assert totals["tree"] >= own + 50 * 2**20


SPIN_S = 0.4
# Stands in for the SuperLink, its SuperExec and the ServerApps the SuperExec starts, one per run:
# the SuperLink and each run spin on the CPU; the first run ends and is reaped, the second is
# still running when measured.
SERVERAPP_TREE = f"""
import subprocess, sys, time
def spin(seconds):
    began = time.process_time()
    while time.process_time() - began < seconds:
        pass
def start(role):
    return subprocess.Popen([sys.executable, "-c", *sys.argv[1:2] * 2, role, sys.argv[3]])
role, ready = sys.argv[2], sys.argv[3]
if role == "superlink":
    spin(3 * {SPIN_S})
    start("superexec")
elif role == "superexec":
    start("ended run").wait()
    start("running run")
else:
    spin({SPIN_S})
    if role == "ended run":
        sys.exit()
    open(ready, "w").close()
time.sleep(60)
"""


def test_the_serverapps_cpu_counts_its_runs_ended_and_running_but_not_the_superlinks(tmp_path):
    ready = tmp_path / "ready"
    superlink = subprocess.Popen(
        [sys.executable, "-c", SERVERAPP_TREE, SERVERAPP_TREE, "superlink", str(ready)]
    )
    try:
        while not ready.exists():
            assert superlink.poll() is None
            time.sleep(0.01)
        serverapp_cpu_s = federation.serverapp_cpu_s(superlink.pid)
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):  # it died: the assertion above says so
            for process in psutil.Process(superlink.pid).children(recursive=True):
                process.kill()
        superlink.kill()
        superlink.wait()

    # Both runs' spins and three interpreters' start-up, not the SuperLink's own 3 × SPIN_S.
    assert 2 * SPIN_S <= serverapp_cpu_s < 4 * SPIN_S
    assert federation.serverapp_cpu_s(superlink.pid) == 0.0  # gone: nothing to count


def test_the_he_ratio_is_the_median_over_pairs_with_their_range(monkeypatch):
    monkeypatch.setattr(federation.psutil, "cpu_count", lambda: 2)

    def rounds(steady_s: float) -> list[dict[str, Any]]:
        # The first and last rounds fall outside each run's median.
        seconds = (9.0, steady_s, steady_s, 20.0)
        return [{"seconds": s, "slowest_train_s": 1.0, "update_bytes": 2**20} for s in seconds]

    def run(steady_s: float, tasks_cpu_s: float) -> federation.StudyRun:
        cpu_s = {
            "SuperNodes": 1.0,
            "launchers": 0.1,
            "ClientApp tasks": tasks_cpu_s,
            "SuperLink": 0.5,
            "ServerApp": tasks_cpu_s / 10,
        }
        return federation.StudyRun(rounds(steady_s), federation.CpuWindow(cpu_s, rounds=1))

    pairs = [
        federation.ComparisonPair(he=run(he, he / 2), plaintext=run(clear, 1.0))
        for he, clear in [(6.0, 4.0), (5.0, 4.0), (4.4, 4.0)]
    ]
    case = federation.ComparisonCase(hospitals=10, rounds=4, hidden=(8,), pairs=3)
    comparison = federation.Comparison(case=case, parameters=100, pairs=pairs)

    assert comparison.ratio == 1.25
    goal = federation.he_round_goal(comparison)
    assert goal.met is False  # the goal is 1.05×
    assert goal.measured == "1.25× (pairs 1.10–1.50), 10 hospitals, 100 parameters"
    table = federation.comparison_table(comparison)
    row = dict(zip(table.columns, table.rows[0], strict=True))
    assert row["HE median round s"] == 5.0
    assert row["HE / plaintext"] == 1.25
    assert row["HE / plaintext min–max"] == "1.10–1.50"
    assert comparison.figures()["ratio_min"] == pytest.approx(1.1)
    assert row["ClientApp tasks CPU s / round: HE / plaintext"] == "2.50 / 1.00"
    assert row["SuperLink CPU s / round: HE / plaintext"] == "0.50 / 0.50"
    assert row["ServerApp CPU s / round: HE / plaintext"] == "0.25 / 0.10"
    # (1.0 + 0.1 + 2.5 + 0.5 + 0.25) CPU-s on 2 cores, against (1.0 + 0.1 + 1.0 + 0.5 + 0.1).
    assert row["all CPU ÷ cores s / round: HE / plaintext"] == "2.17 / 1.35"
    assert comparison.figures()["pairs"][0]["he"]["cpu_s_per_round"]["ClientApp tasks"] == 3.0


def test_each_nodes_budget_allows_every_study_a_comparison_runs(tmp_path):
    # Three pairs of studies at ε = 3 each: 18, past the default lifetime budget of 10.
    consortium = federation.bench_consortium(tmp_path, hospitals=2, rounds=1, studies=6)

    for node in consortium.hospitals:
        policy = node.policy_path.read_text(encoding="utf-8")
        assert "max_lifetime_epsilon = 18.0" in policy


def steady(hospitals: int, *, round_s: float, overhead_s: float) -> federation.ScaleResult:
    """A case whose steady rounds took `round_s` seconds, `overhead_s` of them overhead."""
    rounds = [{"seconds": round_s, "slowest_train_s": 0.1, "overhead_s": overhead_s}] * 3
    return scale_result(hospitals, rounds=rounds)


def test_round_time_grows_linearly_while_per_hospital_seconds_stay_within_the_tolerance():
    at_10 = steady(10, round_s=2.0, overhead_s=1.9)

    linear = federation.scale_goal([at_10, steady(50, round_s=12.0, overhead_s=11.9)], [])
    steeper = federation.scale_goal([at_10, steady(50, round_s=13.0, overhead_s=12.9)], [])

    assert linear.met is True  # 0.24 s per hospital against 0.20: 1.2×
    assert linear.measured == "0.240 s per hospital at 50, 0.200 at 10 (1.20×)"
    assert steeper.met is False  # 1.3×


def test_the_scale_goal_compares_50_hospitals_with_the_10_hospital_runs_around_it():
    # The machine slowed down between the two runs of 10: their mean is the reference.
    before, after = steady(10, round_s=2.0, overhead_s=1.9), steady(10, round_s=2.8, overhead_s=2.7)

    goal = federation.scale_goal([before, steady(50, round_s=12.0, overhead_s=11.9), after], [])

    assert goal.met is True  # 0.24 s per hospital against a mean of 0.24: 1.0×
    assert goal.measured == "0.240 s per hospital at 50, 0.200 and 0.280 at 10 (1.00×)"


def test_a_skipped_scale_case_leaves_the_goal_unjudged_with_the_reason():
    reason = "50 hospitals skipped: they need about 28 GiB (573 MiB each) and 22.0 GiB is available"

    goal = federation.scale_goal([steady(10, round_s=2.0, overhead_s=1.9)], [reason])

    assert goal.met is None
    assert goal.measured == reason


def test_the_overhead_goal_reads_the_10_hospital_case_only():
    small = steady(3, round_s=0.5, overhead_s=0.4)

    assert federation.overhead_goal([small]).met is None
    assert federation.overhead_goal([small, steady(10, round_s=2.0, overhead_s=1.7)]).met is False
    assert federation.overhead_goal([steady(10, round_s=0.8, overhead_s=0.5)]).met is True


def test_the_overhead_goal_shows_the_least_a_round_can_take_on_these_cores(monkeypatch):
    monkeypatch.setattr(federation.psutil, "cpu_count", lambda: 2)
    rounds = [{"seconds": 1.4, "slowest_train_s": 0.1, "overhead_s": 1.3}] * 3
    cpu_s = {"SuperNodes": 1.0, "ClientApp tasks": 0.8, "SuperLink": 0.5, "ServerApp": 0.1}
    case = scale_result(10, rounds=rounds, cpu=federation.CpuWindow(cpu_s, rounds=1))

    goal = federation.overhead_goal([case])

    assert goal.measured == "1.30 s (median round 1.40 s; all CPU ÷ cores 1.20 s)"


def test_the_overhead_goal_takes_the_mean_of_the_10_hospital_runs():
    before, after = steady(10, round_s=0.5, overhead_s=0.4), steady(10, round_s=0.8, overhead_s=0.7)

    goal = federation.overhead_goal([before, steady(50, round_s=9.0, overhead_s=8.0), after])

    assert goal.met is False  # 0.55 s
    assert goal.measured == "0.55 s: the mean of 0.40 s and 0.70 s (median round 0.50 s and 0.80 s)"
