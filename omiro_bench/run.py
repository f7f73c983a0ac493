"""A run of one scenario: the server, the generator processes, the samples, the summary.

The parent starts the server pinned to core 0 and ``procs`` generator
processes pinned to the other cores, meets them at a barrier before and
after each measured phase (scenario.py) to sample the server's CPU, RSS,
run-queue wait and ``/stats``, and returns one JSON-ready result. Generator
CPU and the generators' own loop stalls are reported beside every phase, so
a generator-bound number shows as such.

Every wait is bounded (``BARRIER_TIMEOUT_S``); the server and the
generators are stopped however the run ends.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import resource
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from omiro_bench.scenario import LoadGenerator, OptionsT, Report, Sample, Scenario
from omiro_bench.server import (
    MeasuredServer,
    cpu_seconds,
    rss_kib,
    runqueue_wait_s,
    server_stats,
    snapshot,
    start_server,
)
from omiro_trio.diagnostics import threshold_from_env

BARRIER_TIMEOUT_S = 600.0
JOIN_S = 30.0
STALL_LOG_LINES = 30  # the server's slowest stall lines in the report
STALL_CPU = re.compile(r"\(([\d.]+) ms on the CPU\)")


@dataclass(frozen=True)
class RunOptions:
    """How a run is set up, whatever the scenario.

    Attributes:
        procs: load-generator processes (pinned away from the server's core).
        server_command: the server to start, without ``--host``/``--port``;
            empty: this Python's ``omiro serve``.
        server_env: environment for the server, over ``server.SERVER_ENV``.
    """

    procs: int = 1
    server_command: tuple[str, ...] = ()
    server_env: Mapping[str, str] = field(default_factory=dict)


def run_scenario(scenario: Scenario[OptionsT], options: OptionsT, setup: RunOptions) -> Report:
    """Start a server and ``setup.procs`` generators running ``scenario``; the result.

    The result holds the scenario's name, its options and the run's
    (``options``), whether the processes were pinned, every phase's sample,
    the scenario's summary and the generators' CPU time.
    """
    raise_fd_limit()
    pin = len(os.sched_getaffinity(0)) >= 2
    command = None
    if setup.server_command:
        command = [*setup.server_command, "--host", "127.0.0.1", "--port", "0"]
    server = start_server(pin, dict(setup.server_env), command)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(setup.procs + 1, timeout=BARRIER_TIMEOUT_S)
    stop = ctx.Event()  # set before the last phase's final barrier: no more phases
    reports = ctx.Queue()
    generators = [
        ctx.Process(
            target=_generate,
            args=(scenario, options, setup.procs, server.url, index, barrier, stop, reports),
            daemon=True,
        )
        for index in range(setup.procs)
    ]
    result: Report = {
        "scenario": scenario.name,
        "options": options_dict(options, setup),
        "pinned": pin,
    }
    try:
        for generator in generators:
            generator.start()
        result["rss_start_kib"] = rss_kib(server.pid)
        samples, stall_log = _sample_phases(scenario, options, server, barrier, stop)
        workers = [reports.get(timeout=BARRIER_TIMEOUT_S) for _ in generators]
        for generator in generators:
            generator.join(timeout=JOIN_S)
        for n, sample in enumerate(samples):
            sample["generator_cpu_s"] = sum(w["phase_cpu_s"][n] for w in workers)
            sample["generator_cpu_max_proc_s"] = max(w["phase_cpu_s"][n] for w in workers)
            loops = [w["phase_loop"][n] for w in workers]
            sample["generator_loop_stalls"] = sum(loop["loop_stalls"] for loop in loops)
            sample["generator_worst_stall_ms"] = max(loop["loop_worst_stall_ms"] for loop in loops)
            sample["generator_gc_collections"] = sum(loop["gc_collections"] for loop in loops)
        result["phases"] = [{k: round(v, 3) for k, v in sample.items()} for sample in samples]
        result.update(scenario.summarize(options, samples, workers))
        result["generator_cpu_s"] = sum(w["cpu_s"] for w in workers)
        result["generator_cpu_s_per_proc"] = [round(w["cpu_s"], 2) for w in workers]
        result["rss_end_kib"] = rss_kib(server.pid)
        if stall_log is not None:  # the slowest on the CPU, within measured phases
            stall_log.sort(key=_stall_cpu_ms, reverse=True)
            result["server_stall_log"] = stall_log[:STALL_LOG_LINES]
    finally:
        for generator in generators:
            if generator.is_alive():
                generator.kill()
        server.stop()
    return result


def options_dict(options: Any, setup: RunOptions) -> dict[str, Any]:
    """A run's options, the scenario's and the run's, as the result's ``options``."""
    return {**asdict(setup), **asdict(options)}


def _sample_phases(
    scenario: Scenario[OptionsT], options: OptionsT, server: MeasuredServer, barrier: Any, stop: Any
) -> tuple[list[Sample], list[str] | None]:
    """The parent's side of the phases: a sample of the server for each.

    Returns the samples and, when the server reports its loop stalls
    (``OMIRO_DEBUG_STALLS_MS``), their log lines within the phases.
    """
    pid = server.pid
    samples: list[Sample] = []
    stall_log: list[str] | None = [] if threshold_from_env() is not None else None
    began = time.perf_counter()
    for _ in range(scenario.phases(options)):
        barrier.wait()  # the generators are ready
        snapshot(pid)
        cpu, rss, start = cpu_seconds(pid), rss_kib(pid), time.perf_counter()
        waited = runqueue_wait_s(pid)
        stalls_before = len(server.stall_lines)
        barrier.wait()  # the phase is over
        sample: Sample = {
            "seconds": time.perf_counter() - start,
            "server_cpu_s": cpu_seconds(pid) - cpu,
            # Time the server was ready to run but had no core: other load on
            # the machine, which wall-clock numbers include.
            "server_runqueue_wait_s": runqueue_wait_s(pid) - waited,
            "server_rss_before_kib": rss,
            "server_rss_after_kib": rss_kib(pid),
            "at_s": time.perf_counter() - began,
            **server_stats(server.url),
        }
        if stall_log is not None:
            lines = server.stall_lines[stalls_before:]
            sample["server_loop_stalls"] = len(lines)
            sample["server_worst_stall_cpu_ms"] = max(map(_stall_cpu_ms, lines), default=0.0)
            stall_log.extend(lines)
        samples.append(sample)
        snapshot(pid)
        if scenario.after_phase is not None and scenario.after_phase(options, samples):
            stop.set()
        barrier.wait()  # sampled: the generators may go on (or stop)
        if stop.is_set():
            break
    return samples, stall_log


def _stall_cpu_ms(line: str) -> float:
    """The CPU time of one server stall line (diagnostics.py), 0 if it has none."""
    found = STALL_CPU.search(line)
    return float(found.group(1)) if found else 0.0


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _generate(
    scenario: Scenario[OptionsT],
    options: OptionsT,
    procs: int,
    url: str,
    index: int,
    barrier: Any,
    stop: Any,
    reports: Any,
) -> None:
    """A generator process: pinned away from the server's core, runs its share of the load."""
    raise_fd_limit()
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) >= 2:
        os.sched_setaffinity(0, set(cores[1:]))
    host, port = url.removeprefix("http://").rsplit(":", 1)
    generator = LoadGenerator(host, int(port), index, procs, barrier, stop)
    reports.put(generator.run(scenario, options))
