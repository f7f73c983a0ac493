"""``omiro bench realistic``: users who meet, signal, chat at human rates and press next.

One phase of ``seconds``: ``users`` users arrive over the first tenth of it
and each joins the queue in video mode; when matched, the caller sends an
offer, the other answers, both send 10 to 20 ICE candidates, then chat a
line every 1 to 6 s until the match has lasted a random time in
``next_after`` and they press next. Every relayed frame carries its send
time: the latency is send to receipt. The randomness is seeded with the
generator's number, so runs are comparable.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec
import trio

from omiro_bench.client import HttpClient
from omiro_bench.scenario import LoadGenerator, Report, Sample, Scenario, percentile
from omiro_bench.sessions import open_session

ARRIVAL_SHARE = 0.1  # users arrive over this share of the phase
OVERRUN_S = 30.0  # users still busy this long after the phase's end are cancelled
RELAYED_OPS = ("chat", "webrtc_offer", "webrtc_answer", "ice_candidate")


@dataclass(frozen=True)
class RealisticOptions:
    """``omiro bench realistic``'s knobs.

    Attributes:
        users: users, in all.
        seconds: length of the phase.
        next_after: each match lasts a random time in this range (seconds).
    """

    users: int = 200
    seconds: float = 60.0
    next_after: tuple[float, float] = (5.0, 60.0)


def _stamped(op: str, field: str) -> bytes:
    """An ``op`` frame carrying the send time (in an ICE candidate's foundation)."""
    now = f"{time.perf_counter():.9f}"
    if op == "ice_candidate":
        data: dict[str, Any] = {
            "candidate": {"candidate": f"candidate:{now} 1 udp 1 127.0.0.1 9 typ host"}
        }
    else:
        data = {field: now}
    return msgspec.json.encode({"op": op, "data": data})


def _sent_at(frame: dict[str, Any]) -> float | None:
    """The send time a relayed frame carries, if any."""
    data = frame.get("data") or {}
    value = data.get("message") or data.get("sdp")
    if value is None and isinstance(data.get("candidate"), dict):
        value = data["candidate"]["candidate"].split()[0].removeprefix("candidate:")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


async def generate(options: RealisticOptions, generator: LoadGenerator) -> Report:
    rng = random.Random(generator.index)
    latencies: list[float] = []
    counts = {"matches": 0, "relayed": 0, "errors": 0}
    error_codes: dict[str, int] = {}
    stop_at = 0.0
    join = msgspec.json.encode({"op": "join_queue", "data": {"mode": "video"}})
    nxt = b'{"op":"next"}'

    async def user(http: HttpClient) -> None:
        client = await open_session(http)
        await client.send([join])
        match_id = ""
        async with trio.open_nursery() as nursery:

            async def behave(my_match: str, caller: bool) -> None:
                # Like a real client, this one stops signalling and chatting
                # as soon as the match is over (partner_disconnected, or its
                # own next).
                nonlocal match_id
                if caller:
                    await client.send([_stamped("webrtc_offer", "sdp")])
                for _ in range(rng.randint(10, 20)):
                    await trio.sleep(rng.uniform(0.01, 0.1))
                    if my_match != match_id:
                        return
                    await client.send([_stamped("ice_candidate", "")])
                leave_at = trio.current_time() + rng.uniform(*options.next_after)
                while trio.current_time() < leave_at and my_match == match_id:
                    await trio.sleep(rng.uniform(1.0, 6.0))  # a person typing
                    if my_match == match_id:
                        await client.send([_stamped("chat", "message")])
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
                        await client.send([_stamped("webrtc_answer", "sdp")])
                    elif op == "partner_disconnected":
                        match_id = ""
                        await client.send([join])
                    elif op == "error":
                        counts["errors"] += 1
                        code = str((frame.get("data") or {}).get("code"))
                        error_codes[code] = error_codes.get(code, 0) + 1
                    if op in RELAYED_OPS:
                        counts["relayed"] += 1
                        stamp = _sent_at(frame)
                        if stamp is not None:
                            latencies.append(now - stamp)
            nursery.cancel_scope.cancel()
        await client.aclose()

    await generator.start_phase()
    stop_at = time.perf_counter() + options.seconds
    with trio.move_on_after(options.seconds + OVERRUN_S):
        async with trio.open_nursery() as nursery:
            for _ in range(generator.share(options.users)):
                nursery.start_soon(user, HttpClient(generator.host, generator.port))
                await trio.sleep(options.seconds * ARRIVAL_SHARE / max(1, options.users))
    await generator.end_phase()
    return {"latencies": latencies, "error_codes": error_codes, **counts}


def summarize(options: RealisticOptions, samples: list[Sample], workers: list[Report]) -> Report:
    latencies = sorted(x for w in workers for x in w["latencies"])
    (phase,) = samples
    result: Report = {
        "users": options.users,
        "matches": sum(w["matches"] for w in workers),
        "relayed_frames": sum(w["relayed"] for w in workers),
        "errors": sum(w["errors"] for w in workers),
        "errors_by_code": _summed(w["error_codes"] for w in workers),
        "server_cpu_share": round(phase["server_cpu_s"] / phase["seconds"], 2),
        "server_runqueue_wait_s": round(phase["server_runqueue_wait_s"], 2),
        "generator_cpu_share_max_proc": round(
            phase["generator_cpu_max_proc_s"] / phase["seconds"], 2
        ),
        "server_rss_kib": phase["server_rss_after_kib"],
        "latency_samples": len(latencies),
    }
    if latencies:
        result["latency_p50_ms"] = round(statistics.median(latencies) * 1000, 3)
        result["latency_p99_ms"] = round(percentile(latencies, 0.99) * 1000, 3)
    return result


def _summed(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for one in counts:
        for key, n in one.items():
            total[key] = total.get(key, 0) + n
    return dict(sorted(total.items()))


def _one_phase(options: RealisticOptions) -> int:
    return 1


REALISTIC = Scenario(name="realistic", generate=generate, phases=_one_phase, summarize=summarize)
