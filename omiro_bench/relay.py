"""``omiro bench relay``: chat frames between matched pairs, with idle sockets open.

Three phases: (1) ``idle`` idle sockets are opened (they are what makes GC
pauses show up in the tail; the server's RSS before and after gives memory
per socket); (2) throughput: each side of every pair sends ``messages``
frames to the other as fast as the server takes them, at most ``window`` of
them unanswered; (3) latency: the pairs send at a fixed total ``rate`` for
``seconds`` seconds, one direction each, with the send time in the frame.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import msgspec
import trio

from omiro_bench.client import HttpClient, WsClient
from omiro_bench.scenario import LoadGenerator, Report, Sample, Scenario, percentile
from omiro_bench.sessions import chat_frame, keep_reading, matched_pair, open_session

THROUGHPUT_DEADLINE_S = 600.0
LATENCY_GRACE_S = 60.0  # the latency phase ends at most this long after its ``seconds``

Pair = tuple[WsClient, WsClient]


@dataclass(frozen=True)
class RelayOptions:
    """``omiro bench relay``'s knobs.

    Attributes:
        pairs: matched pairs, in all.
        idle: idle sockets held open during the measurement, in all.
        messages: frames per pair and direction in the throughput phase.
        window: unanswered frames per pair and direction in the throughput phase.
        rate: frames per second, in all, in the latency phase.
        seconds: length of the latency phase.
    """

    pairs: int = 50
    idle: int = 1000
    messages: int = 2000
    window: int = 32
    rate: float = 1000.0
    seconds: float = 10.0


async def generate(options: RelayOptions, generator: LoadGenerator) -> Report:
    report: Report = {}
    http = HttpClient(generator.host, generator.port)
    idle: list[WsClient] = []
    async with trio.open_nursery() as idle_readers:
        await generator.start_phase()
        for _ in range(generator.share(options.idle)):
            client = await open_session(http)
            idle.append(client)
            idle_readers.start_soon(keep_reading, client)
        await generator.end_phase()
        pairs = [
            await matched_pair(http, f"p{generator.index}-{n}")
            for n in range(generator.share(options.pairs))
        ]
        for _, b in pairs:  # the latency phase's receivers
            b.stamp_arrivals()
        await generator.start_phase()
        report["throughput_frames"] = await _throughput(options, pairs)
        await generator.end_phase()
        await generator.start_phase()
        report.update(await _latency(options, pairs, generator.procs))
        await generator.end_phase()
        idle_readers.cancel_scope.cancel()
    for client in idle + [c for pair in pairs for c in pair]:
        await client.aclose()
    await http.aclose()
    return report


async def _throughput(options: RelayOptions, pairs: list[Pair]) -> int:
    """Each side sends ``messages`` frames to the other, at most ``window`` unanswered.

    Readers keep reading (and answering pings) after their share, until
    every direction is done. Returns the frames received.
    """
    frame = chat_frame("x" * 150)  # about 200 bytes on the wire
    expected = 2 * options.messages * len(pairs)
    received = 0
    all_received = trio.Event()

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

    with trio.fail_after(THROUGHPUT_DEADLINE_S):
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
    return received


async def _latency(options: RelayOptions, pairs: list[Pair], procs: int) -> Report:
    """Latency at a fixed offered rate (one direction per pair, send times in the frames).

    Two measures: to when the generator read the frame, and to when the
    frame reached the generator's socket (the kernel's timestamp): the
    difference is the generator's own delay, not the server's.
    """
    latencies: list[float] = []
    at_socket: list[float] = []
    my_rate = options.rate / procs
    interval = len(pairs) / my_rate if pairs else 1.0
    count = int(options.seconds * my_rate / max(1, len(pairs)))
    done = 0
    all_done = trio.Event()

    async def paced(a: WsClient, offset: float) -> None:
        begin = trio.current_time() + offset
        for i in range(count):
            await trio.sleep_until(begin + i * interval)
            await a.send([chat_frame(f"{time.time():.6f}")])
        await keep_reading(a)

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

    with trio.move_on_after(options.seconds + LATENCY_GRACE_S):
        async with trio.open_nursery() as nursery:
            for n, (a, b) in enumerate(pairs):
                nursery.start_soon(timed, b)
                nursery.start_soon(paced, a, n * interval / max(1, len(pairs)))
            if pairs and count:
                await all_done.wait()
            nursery.cancel_scope.cancel()
    return {"latencies": latencies, "at_socket": at_socket}


async def _unstamped(client: WsClient) -> tuple[list[bytes], float | None]:
    return await client.receive(), None


def summarize(options: RelayOptions, samples: list[Sample], workers: list[Report]) -> Report:
    idle, through, latency = samples
    frames = sum(w["throughput_frames"] for w in workers)
    latencies = sorted(x for w in workers for x in w["latencies"])
    result: Report = {
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


def _three_phases(options: RelayOptions) -> int:
    return 3  # idle sockets, throughput, latency


RELAY = Scenario(name="relay", generate=generate, phases=_three_phases, summarize=summarize)
