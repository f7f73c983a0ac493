"""The benchmark lab's pieces that need no server: load shares, scenario values, churn's end."""

from __future__ import annotations

import pickle

import pytest

from omiro_bench.churn import CHURN, CONNECT, ChurnOptions, after_round
from omiro_bench.idle import IDLE
from omiro_bench.realistic import REALISTIC
from omiro_bench.relay import RELAY
from omiro_bench.scenario import LoadGenerator, Sample, Scenario

SCENARIOS = [RELAY, CONNECT, CHURN, IDLE, REALISTIC]


@pytest.mark.parametrize("procs", [1, 2, 3, 7])
def test_load_generator_shares_add_up_to_the_total(procs: int) -> None:
    generators = [LoadGenerator("127.0.0.1", 1, i, procs, None, None) for i in range(procs)]
    for total in range(30):
        shares = [g.share(total) for g in generators]
        assert sum(shares) == total
        assert max(shares) - min(shares) <= 1


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_scenario_reaches_a_spawned_generator_whole(scenario: Scenario[object]) -> None:
    """Generator processes are spawned: the scenario travels pickled, by reference."""
    copy = pickle.loads(pickle.dumps(scenario))
    assert copy == scenario
    assert copy.generate is scenario.generate


def test_scenario_names_are_distinct() -> None:
    assert len({s.name for s in SCENARIOS}) == len(SCENARIOS)


def sample(at_s: float) -> Sample:
    return {"seconds": 2.0, "at_s": at_s, "server_rss_after_kib": 2048.0, "server_cpu_s": 0.5}


def test_churn_goes_on_until_its_minutes_have_passed(capsys: pytest.CaptureFixture[str]) -> None:
    options = ChurnOptions(minutes=0.5, sessions=100, pause=1.0)
    assert not after_round(options, [sample(10.0)])
    assert not after_round(options, [sample(10.0), sample(29.9)])
    assert after_round(options, [sample(10.0), sample(29.9), sample(30.0)])
    printed = capsys.readouterr().err.splitlines()
    assert printed[-1].startswith("round 3: 30 s, sessions seen 300, server RSS 2.0 MiB")


def test_churn_without_minutes_runs_every_round() -> None:
    assert not after_round(ChurnOptions(minutes=0), [sample(1e6)])
