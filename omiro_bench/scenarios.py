"""``omiro bench`` scenarios driven by the lean client, spread over processes.

Each scenario is a worker (one ``trio.run`` per generator process, ``--procs``
of them) plus the parent's bookkeeping: the parent starts the server pinned
to core 0, pins the generator processes to the other cores, meets them at a
barrier before and after each measured phase to sample the server's CPU and
RSS, and prints one JSON object. Generator CPU is reported beside every
result, so a generator-bound number is visible as such.

Every loop is bounded in count and by ``DEADLINE_S``; everything stays on
127.0.0.1.
"""

from __future__ import annotations

import contextlib
import gc
import math
import multiprocessing
import os
import random
import re
import resource
import signal
import statistics
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import msgspec
import trio

from omiro_bench import STALL_LINES, cpu_seconds, percentile, rss_kib, start_server
from omiro_bench.client import IO_TIMEOUT_S, HttpClient, LeanSession, WsClient, op_of
from omiro_trio.diagnostics import TRACEMALLOC_ENV, BatchMonitor, threshold_from_env

DEADLINE_S = 600.0
BARRIER_TIMEOUT_S = 600.0
SNAPSHOT_WAIT_S = 120.0
STALL_LOG_LINES = 30  # the server's slowest stall lines in the report
STALL_CPU = re.compile(r"\(([\d.]+) ms on the CPU\)")


@dataclass
class Options:
    """Every scenario's knobs (``omiro bench <scenario> --help``)."""

    procs: int = 1
    pairs: int = 500
    idle: int = 0
    window: int = 8
    messages: int = 2000
    seconds: float = 5.0
    rate: float = 4000.0
    sessions: int = 2000
    concurrency: int = 100
    rounds: int = 3
    pause: float = 1.0
    minutes: float = 0.0  # churn: run rounds (at most ``rounds``) until this long has passed
    users: int = 200
    next_after: tuple[float, float] = (5.0, 60.0)
    deflate_offer: bool = True
    server_env: dict[str, str] = field(default_factory=dict)
    server_command: list[str] = field(default_factory=list)  # default: this omiro serve


# -- the parent ---------------------------------------------------------------------------


def run_scenario(name: str, options: Options) -> dict[str, Any]:
    """Start a server and ``options.procs`` generators running scenario ``name``."""
    _, phases = SCENARIOS[name]
    raise_fd_limit()
    pin = len(os.sched_getaffinity(0)) >= 2
    command = None
    if options.server_command:
        command = [*options.server_command, "--host", "127.0.0.1", "--port", "0"]
    process, url = start_server(pin, options.server_env, command)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(options.procs + 1, timeout=BARRIER_TIMEOUT_S)
    stop = ctx.Event()  # set before the last phase's final barrier: no more phases
    results_queue = ctx.Queue()
    generators = [
        ctx.Process(
            target=_child,
            args=(name, options, url, index, barrier, results_queue, stop),
            daemon=True,
        )
        for index in range(options.procs)
    ]
    result: dict[str, Any] = {"scenario": name, "options": asdict(options), "pinned": pin}
    try:
        for generator in generators:
            generator.start()
        result["rss_start_kib"] = rss_kib(process.pid)
        samples: list[dict[str, float]] = []
        stall_log: list[str] = []  # the server's stalls within measured phases
        monitored = threshold_from_env() is not None
        began = time.perf_counter()
        for _ in range(phases(options)):
            barrier.wait()  # the generators are ready
            snapshot(process.pid)
            cpu, rss, start = cpu_seconds(process.pid), rss_kib(process.pid), time.perf_counter()
            waited = runqueue_wait_s(process.pid)
            stalls_before = len(STALL_LINES)
            barrier.wait()  # the phase is over
            samples.append(
                {
                    "seconds": time.perf_counter() - start,
                    "server_cpu_s": cpu_seconds(process.pid) - cpu,
                    # Time the server was ready to run but had no core: other
                    # load on the machine, which wall-clock numbers include.
                    "server_runqueue_wait_s": runqueue_wait_s(process.pid) - waited,
                    "server_rss_before_kib": rss,
                    "server_rss_after_kib": rss_kib(process.pid),
                    "at_s": time.perf_counter() - began,
                    **_stats(url),
                }
            )
            if monitored:
                lines = STALL_LINES[stalls_before:]
                samples[-1]["server_loop_stalls"] = len(lines)
                stall_log.extend(lines)
                worst = max(map(_stall_cpu_ms, lines), default=0.0)
                samples[-1]["server_worst_stall_cpu_ms"] = worst
            snapshot(process.pid)
            if options.minutes and time.perf_counter() - began >= options.minutes * 60:
                stop.set()
            if name == "churn":
                _progress(options, samples)
            barrier.wait()  # sampled: the generators may go on (or stop)
            if stop.is_set():
                break
        workers = [results_queue.get(timeout=BARRIER_TIMEOUT_S) for _ in generators]
        for generator in generators:
            generator.join(timeout=30)
        for n, sample in enumerate(samples):
            sample["generator_cpu_s"] = sum(w["phase_cpu_s"][n] for w in workers)
            sample["generator_cpu_max_proc_s"] = max(w["phase_cpu_s"][n] for w in workers)
            loops = [w["phase_loop"][n] for w in workers]
            sample["generator_loop_stalls"] = sum(loop["loop_stalls"] for loop in loops)
            sample["generator_worst_stall_ms"] = max(loop["loop_worst_stall_ms"] for loop in loops)
            sample["generator_gc_collections"] = sum(loop["gc_collections"] for loop in loops)
        result["phases"] = [{k: round(v, 3) for k, v in sample.items()} for sample in samples]
        result.update(SUMMARIES[name](options, samples, workers))
        result["generator_cpu_s"] = sum(w["cpu_s"] for w in workers)
        result["generator_cpu_s_per_proc"] = [round(w["cpu_s"], 2) for w in workers]
        result["rss_end_kib"] = rss_kib(process.pid)
        if monitored:  # the slowest on the CPU, within measured phases
            stall_log.sort(key=_stall_cpu_ms, reverse=True)
            result["server_stall_log"] = stall_log[:STALL_LOG_LINES]
    finally:
        for generator in generators:
            if generator.is_alive():
                generator.kill()
        process.terminate()
        process.wait(timeout=30)
    return result


def snapshot(pid: int) -> None:
    """Ask a server tracing allocations (``OMIRO_DEBUG_TRACEMALLOC``) for a snapshot, and wait."""
    directory = os.environ.get(TRACEMALLOC_ENV)
    if not directory:
        return
    before = _snapshots(directory)
    os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + SNAPSHOT_WAIT_S
    while _snapshots(directory) == before:  # a large heap takes seconds; not measured
        if time.monotonic() > deadline:
            raise RuntimeError(f"no memory snapshot in {directory} after {SNAPSHOT_WAIT_S} s")
        time.sleep(0.05)


def _snapshots(directory: str) -> int:
    return sum(1 for name in os.listdir(directory) if name.endswith(".tracemalloc"))


def _stall_cpu_ms(line: str) -> float:
    """The CPU time of one server stall line (diagnostics.py), 0 if it has none."""
    found = STALL_CPU.search(line)
    return float(found.group(1)) if found else 0.0


def _progress(options: Options, samples: list[dict[str, float]]) -> None:
    """One line per churn round on stderr, so a long run shows how it goes."""
    sample = samples[-1]
    busy = max(sample["seconds"] - options.pause, 1e-9)
    print(
        f"round {len(samples)}: {sample['at_s']:.0f} s, "
        f"sessions seen {len(samples) * options.sessions}, "
        f"server RSS {sample['server_rss_after_kib'] / 1024:.1f} MiB, "
        f"about {options.sessions / 2 / busy:.0f} pairs/s, "
        f"server CPU {sample['server_cpu_s']:.2f} s, "
        f"online after {sample.get('stats_online', -1):.0f}",
        file=sys.stderr,
        flush=True,
    )


def _stats(url: str) -> dict[str, float]:
    """The server's ``/stats`` numbers (none from a server without it, like the baseline)."""
    try:
        with urllib.request.urlopen(f"{url}/stats", timeout=10) as response:
            stats = msgspec.json.decode(response.read())
    except (OSError, ValueError, msgspec.DecodeError):
        return {}
    return {f"stats_{k}": v for k, v in stats.items() if isinstance(v, int | float)}


def runqueue_wait_s(pid: int) -> float:
    """Seconds ``pid`` has spent runnable but not running (Linux schedstat; 0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/schedstat") as schedstat:
            return int(schedstat.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _child(
    name: str, options: Options, url: str, index: int, barrier: Any, results: Any, stop: Any
) -> None:
    global _stop
    _stop = stop
    raise_fd_limit()
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) >= 2:
        os.sched_setaffinity(0, set(cores[1:]))
    host, port = url.removeprefix("http://").rsplit(":", 1)
    worker, _ = SCENARIOS[name]
    start = time.process_time()
    _monitor.install()
    out = trio.run(worker, options, host, int(port), index, barrier, instruments=[_monitor])
    _monitor.uninstall()
    out["cpu_s"] = time.process_time() - start
    out["phase_cpu_s"] = [_marks[i + 1] - _marks[i] for i in range(0, len(_marks) - 1, 2)]
    out["phase_loop"] = _loop
    results.put(out)


_marks: list[float] = []  # this generator's CPU time at each barrier
_loop: list[dict[str, float]] = []  # this generator's own stalls in each phase
# The generator's own event-loop stalls count as server latency in what it
# measures: they are counted (not logged) so that the report tells them apart.
GENERATOR_STALL_S = 0.002
_monitor = BatchMonitor(GENERATOR_STALL_S, report=None)
_stop: Any = None  # the parent's "no more phases" event, in a generator process


def _stopped() -> bool:
    """Whether the parent ended the run (checked after a phase's final barrier)."""
    return _stop is not None and bool(_stop.is_set())


async def _barrier(barrier: Any) -> None:
    """Start of a measured phase: every generator is ready.

    The generator's cyclic GC is off during the phase (what exists now is
    frozen out of its reach first): a collection over thousands of client
    objects would stall the generator and show up as server latency.
    """
    await trio.to_thread.run_sync(barrier.wait)
    gc.collect()
    gc.freeze()
    gc.disable()
    _monitor.reset()
    _marks.append(time.process_time())


async def _phase_end(barrier: Any) -> None:
    """End of a measured phase; returns once the parent has sampled the server."""
    await trio.to_thread.run_sync(barrier.wait)
    _marks.append(time.process_time())
    _loop.append(_monitor.summary())
    gc.enable()
    gc.unfreeze()
    await trio.to_thread.run_sync(barrier.wait)


def _share(total: int, options: Options, index: int) -> int:
    return total // options.procs + (1 if index < total % options.procs else 0)


# -- helpers -------------------------------------------------------------------------------


async def _open(http: HttpClient, host: str, port: int, options: Options) -> WsClient:
    token = await http.token()
    client, early = await WsClient.connect(host, port, token, deflate_offer=options.deflate_offer)
    with trio.fail_after(IO_TIMEOUT_S):
        while not early:
            early = await client.receive()
    if op_of(early[0]) != "hello":
        raise RuntimeError(f"expected hello, got {early[0][:100]!r}")
    return client


async def _until(client: WsClient, op: str) -> None:
    while True:
        frames = await client.receive()
        if not frames:
            raise RuntimeError(f"closed while waiting for {op}")
        if any(op_of(f) == op for f in frames):
            return


async def _pair(
    http: HttpClient, host: str, port: int, options: Options, tag: str
) -> tuple[WsClient, WsClient]:
    join = msgspec.json.encode({"op": "join_queue", "data": {"mode": "text", "interests": [tag]}})
    a = await _open(http, host, port, options)
    b = await _open(http, host, port, options)
    with trio.fail_after(IO_TIMEOUT_S):
        await a.send([join])
        await _until(a, "queued")
        await b.send([join])
        await _until(b, "match_found")
        await _until(a, "match_found")
    return a, b


def _chat(text: str) -> bytes:
    return b'{"op":"chat","data":{"message":"' + text.encode() + b'"}}'


# -- relay: throughput, then latency at a fixed rate ---------------------------------------


async def _keep_reading(client: WsClient) -> None:
    """Read and drop frames (answering pings) until cancelled or closed."""
    with contextlib.suppress(RuntimeError, OSError, trio.BrokenResourceError):
        while await client.receive():
            pass


async def relay_worker(
    options: Options, host: str, port: int, index: int, barrier: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    http = HttpClient(host, port)
    idle: list[WsClient] = []
    async with trio.open_nursery() as idle_readers:
        await _barrier(barrier)
        for _ in range(_share(options.idle, options, index)):
            client = await _open(http, host, port, options)
            idle.append(client)
            idle_readers.start_soon(_keep_reading, client)
        await _phase_end(barrier)
        pairs = [
            await _pair(http, host, port, options, f"p{index}-{n}")
            for n in range(_share(options.pairs, options, index))
        ]
        for _, b in pairs:  # the latency phase's receivers
            b.stamp_arrivals()
        out.update(await _relay_phases(options, pairs, barrier))
        idle_readers.cancel_scope.cancel()
    for client in idle + [c for pair in pairs for c in pair]:
        await client.aclose()
    await http.aclose()
    return out


async def _relay_phases(
    options: Options, pairs: list[tuple[WsClient, WsClient]], barrier: Any
) -> dict[str, Any]:
    frame = _chat("x" * 150)  # about 200 bytes on the wire
    expected = 2 * options.messages * len(pairs)
    received = 0
    all_received = trio.Event()

    # 1. Throughput: each side sends ``messages`` frames to the other, at
    # most ``window`` of them unanswered. Readers keep reading (and answering
    # pings) after their share, until every direction is done.
    async def pump(reader: WsClient, writer: WsClient) -> None:
        nonlocal received
        to_send = options.messages - min(options.window, options.messages)
        while True:
            frames = await reader.receive()
            if not frames:
                raise RuntimeError("closed during the throughput phase")
            received += len(frames)
            if received >= expected:
                all_received.set()
            more = min(len(frames), to_send)
            if more:
                to_send -= more
                await writer.send([frame] * more)

    await _barrier(barrier)
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            first = [frame] * min(options.window, options.messages)
            for a, b in pairs:
                await a.send(first)
                await b.send(first)
            for a, b in pairs:
                nursery.start_soon(pump, a, b)
                nursery.start_soon(pump, b, a)
            if pairs:
                await all_received.wait()
            nursery.cancel_scope.cancel()
    await _phase_end(barrier)

    # 2. Latency at a fixed offered rate (one direction per pair, timestamps in the frames).
    # Two measures: to when the generator read the frame, and to when the
    # frame reached the generator's socket (the kernel's timestamp): the
    # difference is the generator's own delay, not the server's.
    latencies: list[float] = []
    at_socket: list[float] = []
    my_rate = options.rate / options.procs
    interval = len(pairs) / my_rate if pairs else 1.0
    count = int(options.seconds * my_rate / max(1, len(pairs)))
    done = 0
    all_done = trio.Event()

    async def paced(a: WsClient, offset: float) -> None:
        begin = trio.current_time() + offset
        for i in range(count):
            await trio.sleep_until(begin + i * interval)
            await a.send([_chat(f"{time.time():.6f}")])
        await _keep_reading(a)

    async def timed(b: WsClient) -> None:
        nonlocal done
        seen = 0
        while True:
            frames, arrived = await (b.receive_stamped() if b.stamped else _unstamped(b))
            if not frames:
                return
            now = time.time()
            for f in frames:
                sent = float(msgspec.json.decode(f)["data"]["message"])
                latencies.append(now - sent)
                if arrived is not None:
                    at_socket.append(arrived - sent)
            seen += len(frames)
            if seen == count:
                done += 1
                if done == len(pairs):
                    all_done.set()

    await _barrier(barrier)
    with trio.move_on_after(options.seconds + 60):
        async with trio.open_nursery() as nursery:
            for n, (a, b) in enumerate(pairs):
                nursery.start_soon(timed, b)
                nursery.start_soon(paced, a, n * interval / max(1, len(pairs)))
            if pairs and count:
                await all_done.wait()
            nursery.cancel_scope.cancel()
    await _phase_end(barrier)
    return {"throughput_frames": received, "latencies": latencies, "at_socket": at_socket}


async def _unstamped(client: WsClient) -> tuple[list[bytes], float | None]:
    return await client.receive(), None


def relay_summary(
    options: Options, samples: list[dict[str, float]], workers: list[dict[str, Any]]
) -> dict[str, Any]:
    idle, through, latency = samples
    frames = sum(w["throughput_frames"] for w in workers)
    latencies = sorted(x for w in workers for x in w["latencies"])
    result: dict[str, Any] = {
        "rss_empty_kib": idle["server_rss_before_kib"],
        "rss_idle_kib": idle["server_rss_after_kib"],
        "throughput_msgs_per_s": round(frames / through["seconds"]),
        "server_cpu_per_msg_us": round(through["server_cpu_s"] / max(1, frames) * 1e6, 2),
        "server_cpu_share_throughput": round(through["server_cpu_s"] / through["seconds"], 2),
        "latency_rate_per_s": options.rate,
        "latency_samples": len(latencies),
        "rss_end_kib": latency["server_rss_after_kib"],
    }
    if options.idle:
        grown = idle["server_rss_after_kib"] - idle["server_rss_before_kib"]
        result["kib_per_idle_socket"] = round(grown / options.idle, 2)
    if latencies:
        result["latency_p50_ms"] = round(statistics.median(latencies) * 1000, 3)
        result["latency_p99_ms"] = round(percentile(latencies, 0.99) * 1000, 3)
        result["latency_max_ms"] = round(latencies[-1] * 1000, 3)
    at_socket = sorted(x for w in workers for x in w["at_socket"])
    if at_socket:  # without the generator's own delay in reading (kernel timestamps)
        result["latency_at_socket_samples"] = len(at_socket)
        result["latency_at_socket_p50_ms"] = round(statistics.median(at_socket) * 1000, 3)
        result["latency_at_socket_p99_ms"] = round(percentile(at_socket, 0.99) * 1000, 3)
        result["latency_at_socket_max_ms"] = round(at_socket[-1] * 1000, 3)
    return result


# -- connect and churn: token + upgrade + join + match_found, then leave -------------------


async def _connect_round(
    options: Options, host: str, port: int, index: int, sessions: int
) -> dict[str, float]:
    """``sessions`` sessions, ``options.concurrency`` (this process's share) at a time.

    Each user task runs sessions one after another on the lean client
    (``LeanSession``): the generator must cost less per session than the
    server it measures.
    """
    matched = 0
    failures = 0
    todo = sessions
    session = LeanSession(host, port, deflate_offer=options.deflate_offer)

    async def one_user() -> None:
        nonlocal matched, failures, todo
        while todo > 0:
            todo -= 1
            try:
                with trio.fail_after(IO_TIMEOUT_S):
                    await session.run()
                matched += 1
            except (RuntimeError, OSError, trio.TooSlowError):
                failures += 1

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(max(1, _share(options.concurrency, options, index))):
            nursery.start_soon(one_user)
    return {"matched": matched, "failures": failures, "seconds": time.perf_counter() - start}


async def churn_worker(
    options: Options, host: str, port: int, index: int, barrier: Any
) -> dict[str, Any]:
    rounds = []
    for _ in range(options.rounds):
        await _barrier(barrier)
        rounds.append(
            await _connect_round(
                options, host, port, index, _share(options.sessions, options, index)
            )
        )
        await trio.sleep(options.pause)  # sockets close; the server settles
        await _phase_end(barrier)
        if _stopped():
            break
    return {"rounds": rounds}


def _per_session(cpu_s: float, sessions: int) -> float:
    return round(cpu_s / sessions * 1000, 3) if sessions else 0.0


def churn_summary(
    options: Options, samples: list[dict[str, float]], workers: list[dict[str, Any]]
) -> dict[str, Any]:
    rows = []
    seen = 0
    for n, sample in enumerate(samples):
        matched = sum(w["rounds"][n]["matched"] for w in workers)
        failures = sum(w["rounds"][n]["failures"] for w in workers)
        busy = max(w["rounds"][n]["seconds"] for w in workers)
        seen += matched + failures
        rows.append(
            {
                "round": n + 1,
                "at_s": round(sample["at_s"], 1),
                "sessions_matched": matched,
                "failures": failures,
                "sessions_seen": seen,
                "pairs_per_s": round(matched / 2 / busy, 1),
                "server_cpu_s": round(sample["server_cpu_s"], 2),
                # CPU per session (token, upgrade, join, match, leave) on each side:
                # the generator must cost less than the server to measure it.
                "server_cpu_ms_per_session": _per_session(sample["server_cpu_s"], matched),
                "generator_cpu_ms_per_session": _per_session(sample["generator_cpu_s"], matched),
                "server_rss_kib": sample["server_rss_after_kib"],
                "online_after": sample.get("stats_online", -1),
            }
        )
    return {"rounds": rows, "pairs_per_s_median": statistics.median(r["pairs_per_s"] for r in rows)}


# -- idle: sockets held open (offering permessage-deflate), RSS per socket ------------------


async def idle_worker(
    options: Options, host: str, port: int, index: int, barrier: Any
) -> dict[str, Any]:
    http = HttpClient(host, port)
    clients = []
    async with trio.open_nursery() as readers:
        await _barrier(barrier)
        for _ in range(_share(options.idle, options, index)):
            client = await _open(http, host, port, options)
            clients.append(client)
            readers.start_soon(_keep_reading, client)  # answers the server's pings
        await _phase_end(barrier)
        readers.cancel_scope.cancel()
    for client in clients:
        await client.aclose()
    await http.aclose()
    return {"opened": len(clients)}


def idle_summary(
    options: Options, samples: list[dict[str, float]], workers: list[dict[str, Any]]
) -> dict[str, Any]:
    sample = samples[0]
    opened = sum(w["opened"] for w in workers)
    grown = sample["server_rss_after_kib"] - sample["server_rss_before_kib"]
    return {
        "sockets": opened,
        "deflate_offered": options.deflate_offer,
        "server_rss_before_kib": sample["server_rss_before_kib"],
        "server_rss_after_kib": sample["server_rss_after_kib"],
        "kib_per_socket": round(grown / max(1, opened), 2),
        "server_cpu_s_to_open": round(sample["server_cpu_s"], 2),
    }


# -- realistic: users who meet, signal, chat and press next ---------------------------------


async def realistic_worker(
    options: Options, host: str, port: int, index: int, barrier: Any
) -> dict[str, Any]:
    rng = random.Random(index)
    latencies: list[float] = []
    counts = {"matches": 0, "relayed": 0, "errors": 0}
    error_codes: dict[str, int] = {}
    stop_at = 0.0
    join = msgspec.json.encode({"op": "join_queue", "data": {"mode": "video"}})
    nxt = b'{"op":"next"}'

    def stamped(op: str, field_: str) -> bytes:
        now = f"{time.perf_counter():.9f}"
        if op == "ice_candidate":
            data: dict[str, Any] = {
                "candidate": {"candidate": f"candidate:{now} 1 udp 1 127.0.0.1 9 typ host"}
            }
        else:
            data = {field_: now}
        return msgspec.json.encode({"op": op, "data": data})

    def sent_at(frame: dict[str, Any]) -> float | None:
        data = frame.get("data") or {}
        value = data.get("message") or data.get("sdp")
        if value is None and isinstance(data.get("candidate"), dict):
            value = data["candidate"]["candidate"].split()[0].removeprefix("candidate:")
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None

    async def user(http: HttpClient) -> None:
        client = await _open(http, host, port, options)
        await client.send([join])
        match_id = ""
        async with trio.open_nursery() as nursery:

            async def behave(my_match: str, caller: bool) -> None:
                # Like a real client, this one stops signalling and chatting
                # as soon as the match is over (partner_disconnected, or its
                # own next).
                nonlocal match_id
                if caller:
                    await client.send([stamped("webrtc_offer", "sdp")])
                for _ in range(rng.randint(10, 20)):
                    await trio.sleep(rng.uniform(0.01, 0.1))
                    if my_match != match_id:
                        return
                    await client.send([stamped("ice_candidate", "")])
                leave_at = trio.current_time() + rng.uniform(*options.next_after)
                while trio.current_time() < leave_at and my_match == match_id:
                    await trio.sleep(rng.uniform(1.0, 6.0))  # a person typing
                    if my_match == match_id:
                        await client.send([stamped("chat", "message")])
                if my_match == match_id and time.perf_counter() < stop_at:
                    match_id = ""
                    await client.send([nxt])

            while time.perf_counter() < stop_at and not client.closed:
                frames = await client.receive()
                now = time.perf_counter()
                for raw in frames:
                    frame = msgspec.json.decode(raw)
                    op = frame["op"]
                    if op == "match_found":
                        counts["matches"] += 1
                        match_id = frame["data"]["match_id"]
                        nursery.start_soon(behave, match_id, frame["data"]["should_call"])
                    elif op == "webrtc_offer" and match_id:
                        await client.send([stamped("webrtc_answer", "sdp")])
                    elif op == "partner_disconnected":
                        match_id = ""
                        await client.send([join])
                    elif op == "error":
                        counts["errors"] += 1
                        code = str((frame.get("data") or {}).get("code"))
                        error_codes[code] = error_codes.get(code, 0) + 1
                    if op in ("chat", "webrtc_offer", "webrtc_answer", "ice_candidate"):
                        counts["relayed"] += 1
                        stamp = sent_at(frame)
                        if stamp is not None:
                            latencies.append(now - stamp)
            nursery.cancel_scope.cancel()
        await client.aclose()

    await _barrier(barrier)
    stop_at = time.perf_counter() + options.seconds
    with trio.move_on_after(options.seconds + 30):
        async with trio.open_nursery() as nursery:
            for _ in range(_share(options.users, options, index)):
                nursery.start_soon(user, HttpClient(host, port))
                await trio.sleep(options.seconds / 10 / max(1, options.users))  # ramp up
    await _phase_end(barrier)
    return {"latencies": latencies, "error_codes": error_codes, **counts}


def realistic_summary(
    options: Options, samples: list[dict[str, float]], workers: list[dict[str, Any]]
) -> dict[str, Any]:
    latencies = sorted(x for w in workers for x in w["latencies"])
    result: dict[str, Any] = {
        "users": options.users,
        "matches": sum(w["matches"] for w in workers),
        "relayed_frames": sum(w["relayed"] for w in workers),
        "errors": sum(w["errors"] for w in workers),
        "errors_by_code": _summed(w["error_codes"] for w in workers),
        "server_cpu_share": round(samples[0]["server_cpu_s"] / samples[0]["seconds"], 2),
        "server_runqueue_wait_s": round(samples[0]["server_runqueue_wait_s"], 2),
        "generator_cpu_share_max_proc": round(
            samples[0]["generator_cpu_max_proc_s"] / samples[0]["seconds"], 2
        ),
        "server_rss_kib": samples[0]["server_rss_after_kib"],
        "latency_samples": len(latencies),
    }
    if latencies:
        result["latency_p50_ms"] = round(statistics.median(latencies) * 1000, 3)
        result["latency_p99_ms"] = round(percentile(latencies, 0.99) * 1000, 3)
    return result


def _summed(counts: Any) -> dict[str, int]:
    total: dict[str, int] = {}
    for one in counts:
        for key, n in one.items():
            total[key] = total.get(key, 0) + n
    return dict(sorted(total.items()))


# -- realistic, stepped: the most concurrent users within a latency limit ------------------


@dataclass
class FindMax:
    """``omiro bench realistic --find-max``: how to step ``--users`` up, and when to stop."""

    p99_limit_ms: float = 50.0
    factor: float = 1.5  # users of the next step, times this one's
    max_steps: int = 8
    saturated_share: float = 0.95  # a process busy this share of the step is saturated


def find_max_users(options: Options, plan: FindMax) -> dict[str, Any]:
    """Run ``realistic`` at ``options.users``, then more each step, until the limit is passed.

    Each step is a fresh server for ``options.seconds``. Stepping stops at
    the first step whose relay p99 exceeds ``plan.p99_limit_ms``, whose
    server or generator saturated (the generator's own limit is reported as
    such, not as the server's), or after ``plan.max_steps`` steps. Returns
    every step and the largest user count that stayed within the limit on a
    step whose generator kept up.
    """
    steps: list[dict[str, Any]] = []
    best = 0
    stopped_by = "max_steps"
    users = options.users
    for _ in range(plan.max_steps):
        result = run_scenario("realistic", replace(options, users=users))
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
        "options": asdict(options),
        "plan": asdict(plan),
        "steps": steps,
        "stopped_by": stopped_by,
        "max_users_within_p99": best,
    }


Worker = Callable[..., Any]
SCENARIOS: dict[str, tuple[Worker, Callable[[Options], int]]] = {
    "relay": (relay_worker, lambda o: 3),
    "connect": (churn_worker, lambda o: o.rounds),
    "churn": (churn_worker, lambda o: o.rounds),
    "idle": (idle_worker, lambda o: 1),
    "realistic": (realistic_worker, lambda o: 1),
}
SUMMARIES: dict[
    str, Callable[[Options, list[dict[str, float]], list[dict[str, Any]]], dict[str, Any]]
] = {
    "relay": relay_summary,
    "connect": churn_summary,
    "churn": churn_summary,
    "idle": idle_summary,
    "realistic": realistic_summary,
}
