"""``omiro bench realistic --find-max``: the most concurrent users within a latency limit."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from omiro_bench.realistic import REALISTIC, RealisticOptions
from omiro_bench.run import RunOptions, options_dict, run_scenario
from omiro_bench.scenario import Report


@dataclass(frozen=True)
class FindMax:
    """How to step ``--users`` up, and when to stop.

    Attributes:
        p99_limit_ms: the relay p99 a step may reach.
        factor: users of the next step, times this one's.
        max_steps: at most this many steps.
        saturated_share: a process busy this share of the step is saturated.
    """

    p99_limit_ms: float = 50.0
    factor: float = 1.5
    max_steps: int = 8
    saturated_share: float = 0.95


def find_max_users(options: RealisticOptions, plan: FindMax, setup: RunOptions) -> Report:
    """Run ``realistic`` at ``options.users``, then more each step, until the limit is passed.

    Each step is a fresh server for ``options.seconds``. Stepping stops at
    the first step whose relay p99 exceeds ``plan.p99_limit_ms``, whose
    server or generator saturated (the generator's own limit is reported as
    such, not as the server's), or after ``plan.max_steps`` steps. Returns
    every step and the largest user count that stayed within the limit on a
    step whose generator kept up.
    """
    steps: list[Report] = []
    best = 0
    stopped_by = "max_steps"
    users = options.users
    for _ in range(plan.max_steps):
        result = run_scenario(REALISTIC, replace(options, users=users), setup)
        step = {k: v for k, v in result.items() if k not in ("options", "phases")}
        steps.append(step)
        p99 = step.get("latency_p99_ms", math.inf)
        if p99 > plan.p99_limit_ms:
            stopped_by = "p99"
            break
        if step["generator_cpu_share_max_proc"] >= plan.saturated_share:
            # A saturated generator did not offer this step's load: the step
            # says nothing about the server, so it is not counted.
            stopped_by = "generator_saturated"
            break
        best = users
        if step["server_cpu_share"] >= plan.saturated_share:
            stopped_by = "server_saturated"
            break
        users = max(users + 1, round(users * plan.factor))
    return {
        "scenario": "realistic_find_max",
        "options": options_dict(options, setup),
        "plan": asdict(plan),
        "steps": steps,
        "stopped_by": stopped_by,
        "max_users_within_p99": best,
    }
