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


def bench(tmp_path: Path, *args: str) -> dict[str, Any]:
    return bench_with_log(tmp_path, *args)[0]


def bench_with_log(tmp_path: Path, *args: str) -> tuple[dict[str, Any], str]:
    """The JSON report and what the run printed on stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMIRO_")}
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
    assert report["latency_samples"] > 0
    assert report["latency_p99_ms"] >= report["latency_p50_ms"] > 0


def test_bench_relay_with_two_generator_processes(tmp_path: Path) -> None:
    report = bench(
        tmp_path, "relay", "--pairs", "4", "--idle", "4", "--messages", "50", "--window", "4",
        "--rate", "80", "--seconds", "0.5", "--procs", "2",
    )  # fmt: skip
    assert report["args"]["procs"] == 2
    assert report["throughput_msgs_per_s"] > 0
    assert report["latency_samples"] == 40  # 80 frames/s for 0.5 s
    assert len(report["phases"]) == 3
