"""Alerts to a webhook: a real HTTP server started by each test receives them.

The receiver is a small trio server on 127.0.0.1 speaking HTTP/1.1 with h11;
it answers 204, or 500, or nothing at all (it reads the request and keeps
the connection open without a word), as the test asks. The reports come
from real clients in real matches, or straight from the server's report
desk when a test needs many.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import json
import logging
import statistics
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import h11
import pytest
import trio
import trio.testing
from support import Harness, StartServer, wait_until

from omiro_trio.alerts import AlertPolicy, Alerts
from omiro_trio.backends.base import ReportRecord
from omiro_trio.backends.memory import open_memory_backend
from omiro_trio.metrics import Metrics

SECRET = "an-alerts-secret-of-at-least-32-bytes!"
WAIT_S = 10.0
WATCHED_MEDIAN_S = 0.1  # as the budget tests hold a watched pair to
WATCHED_MAX_S = 1.0


@dataclass
class Receiver:
    """A webhook endpoint: what it got, and how it answers."""

    mode: Literal["ok", "error", "silent"] = "ok"
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""
    arrived: trio.Event = field(default_factory=trio.Event)

    async def handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        headers: dict[str, str] = {}
        body = b""
        with trio.move_on_after(WAIT_S):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                elif isinstance(event, h11.Request):
                    headers = {k.decode().lower(): v.decode() for k, v in event.headers}
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
            self.requests.append((headers, body))
            self.arrived.set()
            if self.mode == "silent":
                await trio.sleep_forever()  # ended by the move_on_after above
            status = 204 if self.mode == "ok" else 500
            await stream.send_all(conn.send(h11.Response(status_code=status, headers=[])))
            await stream.send_all(conn.send(h11.EndOfMessage()))

    async def wait_for(self, count: int) -> list[dict[str, Any]]:
        with trio.fail_after(WAIT_S):
            while len(self.requests) < count:
                self.arrived = trio.Event()
                await self.arrived.wait()
        return [json.loads(body) for _, body in self.requests]


@asynccontextmanager
async def receiving(mode: Literal["ok", "error", "silent"] = "ok") -> AsyncIterator[Receiver]:
    receiver = Receiver(mode)
    async with trio.open_nursery() as nursery:
        serve = functools.partial(trio.serve_tcp, receiver.handle, 0, host="127.0.0.1")
        listeners = await nursery.start(serve)
        port = listeners[0].socket.getsockname()[1]
        receiver.url = f"http://127.0.0.1:{port}/hook"
        yield receiver
        nursery.cancel_scope.cancel()


async def alerting_server(start_server: StartServer, receiver: Receiver, **more: Any) -> Harness:
    return await start_server(alerts__webhook_url=receiver.url, alerts__secret=SECRET, **more)


def report(n: int, reason: str, now: float, *, reported: str = "") -> ReportRecord:
    return ReportRecord(
        reported or f"192.0.2.{n % 250 + 1}",
        f"bad{n}",
        f"good{n}",
        f"198.51.{n // 250}.{n % 250 + 1}",
        reason,
        now,
        ("reported: something private",),
    )


@pytest.mark.rule("protocol/alerts")
async def test_a_minor_report_from_a_real_match_is_alerted_at_once_and_signed(
    start_server: StartServer,
) -> None:
    async with receiving() as receiver:
        server = await alerting_server(start_server, receiver)
        a, b = await server.pair()
        await b.send("chat", {"message": "how old are you"})
        await a.expect("chat")
        await a.send("report", {"reason": "minor"})
        await b.expect("partner_disconnected")
        [alert] = await receiver.wait_for(1)
        headers, body = receiver.requests[0]
        assert alert["kind"] == "minor_report"
        assert "possible minor" in alert["text"]
        assert isinstance(alert["report_id"], int)
        assert b"how old" not in body  # no chat leaves the server in an alert
        assert headers["content-type"] == "application/json"
        timestamp = headers["x-omiro-timestamp"]
        expected = hmac.new(SECRET.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
        assert headers["x-omiro-signature"] == "sha256=" + expected.hexdigest()
        assert abs(int(timestamp) - server.ctx.wall()) < 60
        wrong = hmac.new(b"another secret", timestamp.encode() + b"." + body, hashlib.sha256)
        assert headers["x-omiro-signature"] != "sha256=" + wrong.hexdigest()
        # A report of anything else is no alert (below the spike threshold).
        c, d = await server.pair()
        await c.send("report", {"reason": "spam"})
        await d.expect("partner_disconnected")
        with trio.move_on_after(0.5):
            await receiver.wait_for(2)
        assert len(receiver.requests) == 1
        assert server.metric("omiro_alerts_total", kind="minor_report", outcome="sent") == 1


@pytest.mark.rule("protocol/alerts")
async def test_a_spike_is_alerted_once_in_its_window_and_an_autoban_at_once(
    start_server: StartServer,
) -> None:
    async with receiving() as receiver:
        server = await alerting_server(start_server, receiver, alerts__reports_per_hour=3)
        desk = server.ctx.hub.reports
        now = server.ctx.wall()
        for n in range(8):  # past the threshold from the fourth on
            assert await desk.file(report(n, "spam", now), now=now)
        for n in range(3):  # three people report one address: the auto-ban
            assert await desk.file(report(n, "harassment", now, reported="203.0.113.9"), now=now)
        await receiver.wait_for(2)
        with trio.move_on_after(0.5):
            await receiver.wait_for(3)
        alerts = [json.loads(body) for _, body in receiver.requests]
        assert sorted(a["kind"] for a in alerts) == ["autoban", "report_spike"], alerts
        spike = next(a for a in alerts if a["kind"] == "report_spike")
        assert spike["reports_last_hour"] > 3
        assert f"{spike['reports_last_hour']} reports in the last hour" in spike["text"]
        autoban = next(a for a in alerts if a["kind"] == "autoban")
        assert "automatic ban" in autoban["text"]
        assert autoban["reporters"] == 3


@pytest.mark.rule("protocol/alerts")
async def test_a_failing_webhook_is_retried_a_bounded_number_of_times_counted_and_logged_once(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with receiving("error") as receiver:
        server = await alerting_server(start_server, receiver, alerts__retries=2)
        now = server.ctx.wall()
        with caplog.at_level(logging.INFO, logger="omiro_trio.alerts"):
            await server.ctx.hub.reports.file(report(1, "minor", now), now=now)
            await receiver.wait_for(3)  # the first attempt and two retries (1 s, then 2 s)
            await wait_until(
                lambda: (
                    server.metric("omiro_alerts_total", kind="minor_report", outcome="failed") == 1
                ),
                WAIT_S,
            )
            with trio.move_on_after(1.5):
                await receiver.wait_for(4)
        assert len(receiver.requests) == 3
        assert server.metric("omiro_alert_attempts_failed_total") == 3
        assert server.metric("omiro_alerts_total", kind="minor_report", outcome="sent") == 0
        warnings = [r for r in caplog.records if "could not be delivered" in r.getMessage()]
        assert len(warnings) == 1
        assert "HTTP 500" in warnings[0].getMessage()


@pytest.mark.rule("protocol/alerts")
async def test_a_silent_webhook_does_not_slow_the_chat(start_server: StartServer) -> None:
    async with receiving("silent") as receiver:
        server = await alerting_server(start_server, receiver)
        a, b = await server.pair()
        desk = server.ctx.hub.reports
        now = server.ctx.wall()
        round_trips: list[float] = []
        async with trio.open_nursery() as nursery:

            async def flood() -> None:
                # Far more minor reports than the queue holds: each waits 5 s on a
                # webhook that never answers.
                for n in range(300):
                    await desk.file(report(n, "minor", now), now=now)

            nursery.start_soon(flood)
            for n in range(40):
                start = trio.current_time()
                await a.send("chat", {"message": f"ping {n}"})
                await b.expect("chat")
                await b.send("chat", {"message": f"pong {n}"})
                await a.expect("chat")
                round_trips.append(trio.current_time() - start)
                await trio.sleep(0.05)
        await receiver.wait_for(1)
        assert statistics.median(round_trips) <= WATCHED_MEDIAN_S, round_trips
        assert max(round_trips) <= WATCHED_MAX_S, round_trips
        # The queue is bounded: what did not fit was dropped and counted.
        dropped = server.metric("omiro_alerts_total", kind="minor_report", outcome="dropped")
        assert dropped >= 300 - 100 - 1


# -- the window, on a clock the test moves -----------------------------------------


async def test_the_spike_alert_comes_again_only_in_the_next_window(
    autojump_clock: trio.testing.MockClock,
) -> None:
    base = 1_800_000_000.0
    sent: list[bytes] = []

    async def post(url: str, body: bytes, headers: dict[str, str]) -> int:
        sent.append(body)
        return 204

    def wall() -> float:
        return base + trio.current_time()

    policy = AlertPolicy("http://127.0.0.1:1/hook", SECRET, reports_per_hour=2)
    async with open_memory_backend(
        interest_timeout_s=5, rematch_cooldown_s=30, block_ttl_s=60, wall=wall
    ) as backend:
        alerts = Alerts(policy, backend, Metrics(), wall=wall, post=post)
        async with trio.open_nursery() as nursery:
            await nursery.start(alerts.run)
            for minute in range(180):  # three hours, a report every minute
                record = report(minute, "spam", wall())
                report_id = await backend.record_report(record)
                alerts.report_filed(dataclasses.replace(record, id=report_id))
                await trio.sleep(60)
            nursery.cancel_scope.cancel()
    kinds = [json.loads(body)["kind"] for body in sent]
    assert kinds == ["report_spike"] * 3  # once in each hour's window
