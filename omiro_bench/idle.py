"""``omiro bench idle``: server memory per idle socket.

One phase: ``sockets`` sessions are opened (offering permessage-deflate, as
browsers do, unless told not to) and held, each answering the server's
pings; the server's RSS before and after gives memory per socket.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from omiro_bench.client import HttpClient, WsClient
from omiro_bench.scenario import LoadGenerator, Report, Sample, Scenario
from omiro_bench.sessions import keep_reading, open_session


@dataclass(frozen=True)
class IdleOptions:
    """``omiro bench idle``'s knobs.

    Attributes:
        sockets: idle sockets, in all.
        deflate_offer: offer permessage-deflate, as browsers do.
    """

    sockets: int = 10000
    deflate_offer: bool = True


async def generate(options: IdleOptions, generator: LoadGenerator) -> Report:
    http = HttpClient(generator.host, generator.port)
    clients: list[WsClient] = []
    async with trio.open_nursery() as readers:
        await generator.start_phase()
        for _ in range(generator.share(options.sockets)):
            client = await open_session(http, deflate_offer=options.deflate_offer)
            clients.append(client)
            readers.start_soon(keep_reading, client)  # answers the server's pings
        await generator.end_phase()
        readers.cancel_scope.cancel()
    for client in clients:
        await client.aclose()
    await http.aclose()
    return {"opened": len(clients)}


def summarize(options: IdleOptions, samples: list[Sample], workers: list[Report]) -> Report:
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


def _one_phase(options: IdleOptions) -> int:
    return 1


IDLE = Scenario(name="idle", generate=generate, phases=_one_phase, summarize=summarize)
