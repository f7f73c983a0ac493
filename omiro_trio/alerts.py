"""Alerts: a webhook told at once of what needs a person (config ``[alerts]``).

Three alerts: a report of a possible minor (at once), an automatic ban
(at once), and a spike: more than ``reports_per_hour`` reports kept in the
last hour, sent once an hour for the whole service (the window is the
backend's, so two servers do not both send it).

What a report or an auto-ban does is never slowed by an alert: the report
desk hands its news over with ``report_filed`` / ``autobanned``, which put
it on a bounded queue without waiting (``QUEUE_SIZE``; news past it is
dropped and counted), and one background task (``run``) works the queue:
the spike check's backend calls and the deliveries happen there, one alert
at a time.

A delivery is one ``POST`` of JSON to ``webhook_url`` with the headers
``X-Omiro-Timestamp`` (unix seconds) and ``X-Omiro-Signature:
sha256=HEX``, the HMAC-SHA256 under ``secret`` of ``"<timestamp>." +
body``. The body's ``text`` is a plain sentence (chat tools that take
incoming webhooks show it as is); its other fields say the same for
programs. An attempt has ``timeout_s``; a failed one (no answer, not 2xx)
is tried again ``retries`` times with backoff (``BACKOFF_S``), then the
alert is dropped. Outcomes are counted in ``omiro_alerts_total{kind,
outcome}``; a run of failures is logged once when it starts and once when
deliveries work again.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import msgspec
import trio

from omiro_trio.backends.base import Backend, Ban, ReportRecord
from omiro_trio.errors import BackendUnavailable
from omiro_trio.metrics import Metrics
from omiro_trio.triage import Category, category

log = logging.getLogger(__name__)

QUEUE_SIZE = 100
"""News waiting for the alert task, at most; past it, news is dropped."""
BACKOFF_S = (1.0, 2.0, 4.0, 8.0)
"""Waits before the retries (the last repeats)."""
SPIKE_WINDOW_S = 3600.0
SPIKE_KEY = "alerts:spike"

AlertKind = Literal["minor_report", "autoban", "report_spike"]


@dataclass(frozen=True, slots=True)
class AlertPolicy:
    """Config ``[alerts]``."""

    webhook_url: str
    secret: str
    reports_per_hour: int = 20
    timeout_s: float = 5.0
    retries: int = 3


@dataclass(frozen=True, slots=True)
class _Filed:
    report: ReportRecord


@dataclass(frozen=True, slots=True)
class _Autobanned:
    ban: Ban
    reporters: int
    report_id: int


_News = _Filed | _Autobanned
Post = Callable[[str, bytes, dict[str, str]], Awaitable[int]]
"""Sends a body with headers to a URL; returns the HTTP status (raises ``httpx.HTTPError``)."""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Omiro-Signature`` of ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class Alerts:
    """Takes the report desk's news without waiting; ``run`` sends the alerts.

    Args:
        policy: where and how to send.
        backend: the spike check's counts and window.
        metrics: ``alerts`` counts outcomes.
        wall: unix time.
        post: sends one request (default: httpx, opened by ``run``).
    """

    def __init__(
        self,
        policy: AlertPolicy,
        backend: Backend,
        metrics: Metrics,
        *,
        wall: Callable[[], float] = time.time,
        post: Post | None = None,
    ) -> None:
        self.policy = policy
        self._backend = backend
        self._metrics = metrics
        self._wall = wall
        self._post = post
        self._send, self._receive = trio.open_memory_channel[_News](QUEUE_SIZE)
        self._failing = False

    # -- from the report desk (never waits) ------------------------------------

    def report_filed(self, report: ReportRecord) -> None:
        self._put(_Filed(report))

    def autobanned(self, ban: Ban, reporters: int, report_id: int) -> None:
        self._put(_Autobanned(ban, reporters, report_id))

    def _put(self, news: _News) -> None:
        try:
            self._send.send_nowait(news)
        except trio.WouldBlock:
            kind: AlertKind = "autoban"
            if isinstance(news, _Filed):  # the alert it would have made, or the spike check
                minor = category(news.report.reason) is Category.MINOR
                kind = "minor_report" if minor else "report_spike"
            self._metrics.alerts.labels(kind, "dropped").inc()

    # -- the task --------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send alerts for the news as it comes, until cancelled."""
        if self._post is not None:
            task_status.started()
            await self._work(self._post)
            return
        timeout = httpx.Timeout(self.policy.timeout_s)
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:

            async def post(url: str, body: bytes, headers: dict[str, str]) -> int:
                response = await client.post(url, content=body, headers=headers)
                return response.status_code

            task_status.started()
            await self._work(post)

    async def _work(self, post: Post) -> None:
        async for news in self._receive:
            try:
                for kind, fields in await self._alerts_for(news):
                    await self._deliver(post, kind, fields)
            except Exception:  # a bug: logged and counted; the next news is worked on
                log.exception("the alert task failed on one piece of news")
                self._metrics.background_failures.labels("alerts").inc()

    async def _alerts_for(self, news: _News) -> list[tuple[AlertKind, dict[str, Any]]]:
        if isinstance(news, _Autobanned):
            ban = news.ban
            hours = (
                ""
                if ban.until is None
                else f" for {math.ceil((ban.until - ban.created_at) / 3600)} h"
            )
            text = (
                f"Omiro: an automatic ban fired{hours} after {news.reporters} people reported "
                f"the same address group (report #{news.report_id})."
            )
            return [
                (
                    "autoban",
                    {"text": text, "report_id": news.report_id, "reporters": news.reporters},
                )
            ]
        report = news.report
        alerts: list[tuple[AlertKind, dict[str, Any]]] = []
        if category(report.reason) is Category.MINOR:
            text = (
                f"Omiro: a report of a possible minor (report #{report.id}). "
                "Open the moderator console now."
            )
            alerts.append(("minor_report", {"text": text, "report_id": report.id}))
        try:
            recent = await self._backend.count_reports_since(self._wall() - SPIKE_WINDOW_S)
            over = recent > self.policy.reports_per_hour
            if over and await self._backend.hit_rate_limit(SPIKE_KEY, 1, SPIKE_WINDOW_S) is None:
                text = (
                    f"Omiro: {recent} reports in the last hour "
                    f"(more than {self.policy.reports_per_hour})."
                )
                alerts.append(("report_spike", {"text": text, "reports_last_hour": recent}))
        except BackendUnavailable:  # no spike alert this time
            log.debug("the spike check failed: the backend did not answer")
        return alerts

    async def _deliver(self, post: Post, kind: AlertKind, fields: dict[str, Any]) -> None:
        """Send one alert, trying again with backoff; count and log the outcome."""
        body = msgspec.json.encode({"kind": kind, "at": int(self._wall()), **fields})
        policy = self.policy
        for attempt in range(policy.retries + 1):
            if attempt:
                await trio.sleep(BACKOFF_S[min(attempt - 1, len(BACKOFF_S) - 1)])
            timestamp = str(int(self._wall()))
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "omiro-alerts",
                "X-Omiro-Timestamp": timestamp,
                "X-Omiro-Signature": sign(policy.secret, timestamp, body),
            }
            problem = ""
            try:
                with trio.fail_after(policy.timeout_s):
                    status = await post(policy.webhook_url, body, headers)
            except (httpx.HTTPError, trio.TooSlowError, OSError) as exc:
                problem = type(exc).__name__
            else:
                if 200 <= status < 300:
                    self._metrics.alerts.labels(kind, "sent").inc()
                    if self._failing:
                        self._failing = False
                        log.info("alerts are delivered again")
                    return
                problem = f"HTTP {status}"
            self._metrics.alert_attempts_failed.inc()
            if not self._failing:
                self._failing = True
                log.warning("an alert could not be delivered (%s); trying again", problem)
        self._metrics.alerts.labels(kind, "failed").inc()
