"""``omiro bench realistic --find-max``'s stepping rules, without servers."""

from __future__ import annotations

from typing import Any

import pytest

from omiro_bench import find_max
from omiro_bench.find_max import FindMax, find_max_users
from omiro_bench.realistic import REALISTIC, RealisticOptions
from omiro_bench.run import RunOptions
from omiro_bench.scenario import Scenario


def steps_of(results: dict[int, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    def run_scenario(
        scenario: Scenario[RealisticOptions], options: RealisticOptions, setup: RunOptions
    ) -> dict[str, Any]:
        assert scenario is REALISTIC
        return {"users": options.users, **results[options.users]}

    monkeypatch.setattr(find_max, "run_scenario", run_scenario)


def step(p99: float, server: float = 0.5, generator: float = 0.5) -> dict[str, Any]:
    return {
        "latency_p99_ms": p99,
        "server_cpu_share": server,
        "generator_cpu_share_max_proc": generator,
    }


def test_a_step_whose_generator_saturated_is_not_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    steps_of({10: step(5.0), 20: step(8.0, generator=0.99)}, monkeypatch)
    report = find_max_users(
        RealisticOptions(users=10), FindMax(factor=2.0, max_steps=5), RunOptions()
    )
    assert [s["users"] for s in report["steps"]] == [10, 20]
    assert report["stopped_by"] == "generator_saturated"
    assert report["max_users_within_p99"] == 10  # 20 users were never really offered


def test_a_saturated_server_within_the_limit_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    steps_of({10: step(5.0), 20: step(40.0, server=0.97)}, monkeypatch)
    report = find_max_users(
        RealisticOptions(users=10), FindMax(factor=2.0, max_steps=5), RunOptions()
    )
    assert report["stopped_by"] == "server_saturated"
    assert report["max_users_within_p99"] == 20


def test_the_first_step_over_the_limit_stops_and_is_not_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    steps_of({10: step(5.0), 15: step(60.0)}, monkeypatch)
    report = find_max_users(RealisticOptions(users=10), FindMax(max_steps=5), RunOptions())
    assert report["stopped_by"] == "p99"
    assert report["max_users_within_p99"] == 10
