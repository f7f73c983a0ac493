"""Reports: keeping one, and banning a client enough people reported.

The session's core ends the match and blocks the pair itself; what is left
is the desk's: a reporter's allowance (``per_reporter_per_hour``, per
client), the report kept for the operators (with the transcript the core
took), and the auto-ban: ``autoban_reporters`` distinct clients reporting
one client within ``autoban_window_s`` ban it for ``autoban_s``, unless a
ban is already in force (an operator's is never shortened). One client
cannot report itself away. Time is passed in.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from omiro_trio import bus
from omiro_trio.backends.base import AuditEntry, Backend, Ban, ReportRecord, ReportStatus
from omiro_trio.metrics import Metrics

log = logging.getLogger(__name__)

REPORT_WINDOW_S = 3600.0  # per_reporter_per_hour
AUTO = "auto"  # who set an automatic ban, in the ban and the audit log


@dataclass(frozen=True, slots=True)
class ReportPolicy:
    """How reports are limited and when they ban (config ``[reports]``, ``limits``)."""

    per_reporter_per_hour: int = 10
    autoban_reporters: int = 3
    autoban_window_s: float = 3600.0
    autoban_s: float = 86400.0


class ReportWatcher(Protocol):
    """Told of each report kept and each automatic ban, without waiting (``alerts.Alerts``)."""

    def report_filed(self, report: ReportRecord) -> None: ...

    def autobanned(self, ban: Ban, reporters: int, report_id: int) -> None: ...


class _Unwatched:
    def report_filed(self, report: ReportRecord) -> None:
        pass

    def autobanned(self, ban: Ban, reporters: int, report_id: int) -> None:
        pass


class ReportDesk:
    """Keeps reports and bans the clients they add up against.

    Args:
        backend: where reports, windows and bans are kept.
        metrics: ``reports`` and ``autobans`` are counted here.
        policy: the limits.
        close_banned: closes this server's sockets a ban target covers
            (returns how many); other servers hear of the ban on the bus.
        watcher: told of each report kept and each automatic ban.
    """

    def __init__(
        self,
        backend: Backend,
        metrics: Metrics,
        policy: ReportPolicy,
        *,
        close_banned: Callable[[str], int],
        watcher: ReportWatcher | None = None,
    ) -> None:
        self.policy = policy
        self._backend = backend
        self._metrics = metrics
        self._close_banned = close_banned
        self._watcher: ReportWatcher = watcher or _Unwatched()

    async def file(self, report: ReportRecord, *, now: float) -> bool:
        """Keep ``report`` unless its reporter is over its allowance (then False).

        ``now`` is unix time (a ban it leads to starts then).

        Raises:
            BackendUnavailable: the backend did not answer.
        """
        policy = self.policy
        backend = self._backend
        over = await backend.hit_rate_limit(
            f"reports:{report.reporter_ip}", policy.per_reporter_per_hour, REPORT_WINDOW_S
        )
        if over is not None:
            return False
        report_id = await backend.record_report(report)
        self._metrics.reports.inc()
        self._watcher.report_filed(dataclasses.replace(report, id=report_id))
        reported = report.reported_ip
        if reported and reported != report.reporter_ip:  # one address cannot report itself away
            reporters = await backend.count_reporter(
                reported, report.reporter_ip, policy.autoban_window_s
            )
            if reporters >= policy.autoban_reporters and await self._autoban(
                reported, reporters, report_id, now
            ):
                # The moderators see on the report that the ban fired (nobody
                # has acted on a report just filed, so it is still open).
                opened = ReportStatus()
                await backend.swap_report_status(report_id, opened, ReportStatus(autoban=True))
        return True

    async def _autoban(self, ip: str, reporters: int, report_id: int, now: float) -> bool:
        """Ban ``ip`` unless a ban is in force; whether this one was set."""
        backend = self._backend
        if await backend.ban_for(ip) is not None:
            return False  # never shorten a ban an operator set
        autoban_s = self.policy.autoban_s
        reason = f"reported by {reporters} people"
        ban = Ban(ip, reason, now + autoban_s, now, by=AUTO)
        closed = await bus.put_ban_in_force(backend, ban, self._close_banned)
        await backend.append_audit(AuditEntry(now, AUTO, "ban", ip, report_id, reason))
        self._metrics.autobans.inc()
        self._watcher.autobanned(ban, reporters, report_id)
        log.info(
            "banned %s for %.0f s after %d reports (%d sockets closed)",
            ip,
            autoban_s,
            reporters,
            closed,
        )
        return True
