"""Every ``omiro bench`` scenario runs briefly against a real server and prints parsable JSON.

These prove the scenarios work, not how fast anything is (no timing assertions:
speed is shown in BENCHMARKS.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

OMIRO = str(Path(sys.executable).with_name("omiro"))
RUN_S = 120


def bench(tmp_path: Path, *args: str, env_extra: dict[str, str] | None = None) -> dict[str, Any]:
    return bench_with_log(tmp_path, *args, env_extra=env_extra)[0]


def bench_with_log(
    tmp_path: Path, *args: str, env_extra: dict[str, str] | None = None
) -> tuple[dict[str, Any], str]:
    """The JSON report and what the run printed on stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMIRO_")}
    env.update(env_extra or {})
    result = subprocess.run(
        [OMIRO, "bench", *args, "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_S,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report, result.stderr


@pytest.mark.parametrize("procs", ["1", "2"])
def test_bench_connect_matches_every_session(tmp_path: Path, procs: str) -> None:
    report = bench(tmp_path, "connect", "--sessions", "40", "--concurrency", "4", "--procs", procs)
    (row,) = report["rounds"]
    assert (row["sessions_matched"], row["failures"]) == (40, 0)
    assert row["pairs_per_s"] > 0
    assert row["online_after"] == 0
    assert len(report["generator_cpu_s_per_proc"]) == int(procs)
    assert row["server_cpu_ms_per_session"] > 0
    assert row["generator_cpu_ms_per_session"] > 0


def test_bench_connect_with_pow_solves_a_challenge_per_session(tmp_path: Path) -> None:
    """``--pow``: the server asks for proof of work; each session solves one (the
    client refuses a server that asks for none, so a full count proves both)."""
    report = bench(tmp_path, "connect", "--sessions", "20", "--concurrency", "4", "--pow")
    (row,) = report["rounds"]
    assert (row["sessions_matched"], row["failures"]) == (20, 0)
    assert report["options"]["pow"] is True
    assert row["server_cpu_ms_per_session"] > 0


def test_bench_churn_reports_each_round(tmp_path: Path) -> None:
    report = bench(tmp_path, "churn", "--rounds", "3", "--sessions", "20", "--pause", "0.2")
    rounds = report["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert [r["sessions_seen"] for r in rounds] == [20, 40, 60]
    assert all(r["server_rss_kib"] > 0 and r["online_after"] == 0 for r in rounds)


def test_bench_churn_minutes_runs_rounds_until_the_duration(tmp_path: Path) -> None:
    minutes = 0.01  # 0.6 s; a round takes at least its 0.2 s pause, so 40 never fit
    report, log = bench_with_log(
        tmp_path, "churn", "--minutes", str(minutes), "--rounds", "40", "--sessions", "10",
        "--pause", "0.2", "--procs", "2",
    )  # fmt: skip
    rounds = report["rounds"]
    assert 1 <= len(rounds) < 40
    # It stopped after the first round that ended past the duration.
    assert rounds[-1]["at_s"] >= minutes * 60 - 0.05
    assert all(r["at_s"] <= minutes * 60 + 0.05 for r in rounds[:-1])
    assert [r["sessions_seen"] for r in rounds] == [10 * (n + 1) for n in range(len(rounds))]
    # Each round was also printed as it ended.
    printed = [line for line in log.splitlines() if line.startswith("round ")]
    assert len(printed) == len(rounds)
    assert f"sessions seen {10 * len(rounds)}, server RSS" in printed[-1]


def test_bench_idle_counts_sockets_and_memory(tmp_path: Path) -> None:
    report = bench(tmp_path, "idle", "--sockets", "30", "--procs", "2")
    assert report["sockets"] == 30
    assert report["deflate_offered"] is True
    assert report["phases"][0]["stats_online"] == 30
    assert report["server_rss_after_kib"] >= report["server_rss_before_kib"] > 0


def test_bench_realistic_relays_signaling_and_chat(tmp_path: Path) -> None:
    report = bench(
        tmp_path, "realistic", "--users", "6", "--seconds", "3", "--next-after", "1", "2"
    )
    assert report["matches"] >= 6  # everyone met someone at least once
    assert report["relayed_frames"] > 0
    assert report["errors"] == 0
    assert report["errors_by_code"] == {}  # no ICE candidates after the match ended
    assert report["latency_samples"] > 0
    assert report["latency_p99_ms"] >= report["latency_p50_ms"] > 0


def test_bench_realistic_find_max_steps_users_up(tmp_path: Path) -> None:
    report = bench(
        tmp_path, "realistic", "--users", "4", "--seconds", "2", "--next-after", "1", "2",
        "--find-max", "--max-steps", "2", "--step-factor", "1.5", "--p99-limit-ms", "1000000",
    )  # fmt: skip
    assert report["scenario"] == "realistic_find_max"
    assert [step["users"] for step in report["steps"]] == [4, 6]
    assert report["stopped_by"] == "max_steps"
    assert report["max_users_within_p99"] == 6
    assert all(step["matches"] >= step["users"] for step in report["steps"])
    assert all(isinstance(step["errors_by_code"], dict) for step in report["steps"])


def test_bench_realistic_find_max_stops_at_the_latency_limit(tmp_path: Path) -> None:
    report = bench(
        tmp_path, "realistic", "--users", "4", "--seconds", "2", "--next-after", "1", "2",
        "--find-max", "--max-steps", "3", "--p99-limit-ms", "0",
    )  # fmt: skip
    assert len(report["steps"]) == 1  # any latency is above a limit of 0
    assert report["stopped_by"] == "p99"
    assert report["max_users_within_p99"] == 0


def test_bench_relay_with_two_generator_processes(tmp_path: Path) -> None:
    report = bench(
        tmp_path, "relay", "--pairs", "4", "--idle", "4", "--messages", "50", "--window", "4",
        "--rate", "80", "--seconds", "0.5", "--procs", "2",
    )  # fmt: skip
    assert report["args"]["procs"] == 2
    assert report["throughput_msgs_per_s"] > 0
    assert report["latency_samples"] == 40  # 80 frames/s for 0.5 s
    if sys.platform.startswith("linux"):  # kernel arrival timestamps (the first may have none)
        assert 0 < report["latency_at_socket_samples"] <= 40
        assert report["latency_at_socket_p99_ms"] >= report["latency_at_socket_p50_ms"] > 0
    assert len(report["phases"]) == 3
    assert all(phase["generator_gc_collections"] == 0 for phase in report["phases"])
    assert "server_stall_log" not in report  # the diagnostic switch is off


def test_bench_relay_reports_server_stalls_when_asked(tmp_path: Path) -> None:
    report = bench(
        tmp_path, "relay", "--pairs", "2", "--idle", "2", "--messages", "20", "--window", "4",
        "--rate", "40", "--seconds", "0.5",
        env_extra={"OMIRO_DEBUG_STALLS_MS": "0.0001"},  # every scheduling round is a stall
    )  # fmt: skip
    assert all(phase["server_loop_stalls"] > 0 for phase in report["phases"])
    log = report["server_stall_log"]
    assert 0 < len(log) <= 30
    assert all("loop stall" in line and "on the CPU" in line for line in log)


def test_bench_idle_writes_memory_snapshots_when_asked(tmp_path: Path) -> None:
    snapshots = tmp_path / "snapshots"
    snapshots.mkdir()
    report = bench(
        tmp_path, "idle", "--sockets", "5",
        env_extra={"OMIRO_DEBUG_TRACEMALLOC": str(snapshots)},
    )  # fmt: skip
    assert report["sockets"] == 5
    names = sorted(p.name for p in snapshots.iterdir())
    assert len(names) == 2  # before and after the phase
    assert all(name.endswith(".tracemalloc") for name in names)
