"""The moderators' rules (triage.py): severity, the queue's order, status changes, roles."""

from __future__ import annotations

import pytest

from omiro_trio.backends.base import Ban, ReportRecord, ReportStatus
from omiro_trio.triage import (
    TOKEN_ACTOR,
    Actor,
    Category,
    Refused,
    category,
    change_status,
    may_ban,
    may_lift,
    order_queue,
)

ANA = Actor("ana", "moderator")
BO = Actor("bo", "moderator")
ADA = Actor("ada", "admin")
CLAIM_S = 900.0
DAY = 86400


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("minor", Category.MINOR),
        ("Minor: looks about 12", Category.MINOR),
        ("nudity", Category.NUDITY),
        ("harassment", Category.HARASSMENT),
        ("SPAM.", Category.SPAM),
        ("other", Category.OTHER),
        ("", Category.OTHER),
        ("   ", Category.OTHER),
        ("he was minor-ly rude", Category.OTHER),
        ("<script>minor</script>", Category.OTHER),
    ],
)
def test_category_is_the_reasons_first_word(reason: str, expected: Category) -> None:
    assert category(reason) is expected


def _report(n: int, reason: str, reported: str, reporter: str) -> ReportRecord:
    return ReportRecord(reported, f"s{n}", f"r{n}", reporter, reason, 1000.0 + n, (), id=n)


def test_queue_puts_minors_first_then_by_category_then_distinct_reporters_then_age() -> None:
    reports = [
        _report(1, "spam", "10.0.0.1", "1.1.1.1"),
        _report(2, "harassment", "10.0.0.2", "1.1.1.1"),
        _report(3, "harassment", "10.0.0.3", "1.1.1.1"),
        _report(4, "harassment", "10.0.0.3", "1.1.1.2"),  # two people reported .3
        _report(5, "harassment", "10.0.0.3", "1.1.1.2"),  # the same person twice counts once
        _report(6, "minor", "10.0.0.9", "1.1.1.1"),
        _report(7, "nudity", "10.0.0.4", "1.1.1.1"),
        _report(8, "free text", "10.0.0.5", "1.1.1.1"),
    ]
    queue = order_queue([(r, ReportStatus()) for r in reports])
    assert [e.report.id for e in queue] == [6, 7, 3, 4, 5, 2, 1, 8]
    assert [e.reporters for e in queue][:5] == [1, 1, 2, 2, 2]


def test_a_claim_holds_others_off_until_it_lapses() -> None:
    claimed = change_status(ReportStatus(), "claim", ANA, 100.0, claim_s=CLAIM_S)
    assert (claimed.state, claimed.by, claimed.at) == ("claimed", "ana", 100.0)
    with pytest.raises(Refused) as refused:
        change_status(claimed, "claim", BO, 200.0, claim_s=CLAIM_S)
    assert refused.value.conflict
    with pytest.raises(Refused):
        change_status(claimed, "dismiss", BO, 200.0, claim_s=CLAIM_S)
    # Ana may claim again (it renews), and after the claim lapses Bo may take it.
    assert change_status(claimed, "claim", ANA, 300.0, claim_s=CLAIM_S).at == 300.0
    taken = change_status(claimed, "claim", BO, 100.0 + CLAIM_S, claim_s=CLAIM_S)
    assert taken.by == "bo"
    # An admin may decide a report someone else holds.
    assert change_status(claimed, "dismiss", ADA, 200.0, claim_s=CLAIM_S).state == "dismissed"


def test_only_the_claimer_or_an_admin_releases_a_claim() -> None:
    claimed = change_status(ReportStatus(), "claim", ANA, 100.0, claim_s=CLAIM_S)
    with pytest.raises(Refused):
        change_status(claimed, "release", BO, 101.0, claim_s=CLAIM_S)
    assert change_status(claimed, "release", ANA, 101.0, claim_s=CLAIM_S).state == "open"
    assert change_status(claimed, "release", ADA, 101.0, claim_s=CLAIM_S).state == "open"
    with pytest.raises(Refused):
        change_status(ReportStatus(), "release", ANA, 101.0, claim_s=CLAIM_S)


def test_a_decided_report_is_final() -> None:
    done = change_status(
        ReportStatus(), "action", ANA, 100.0, claim_s=CLAIM_S, action="ban 3600 s", note="n"
    )
    assert (done.state, done.action, done.note, done.by) == ("actioned", "ban 3600 s", "n", "ana")
    for change in ("claim", "release", "action", "dismiss"):
        with pytest.raises(Refused) as refused:
            change_status(done, change, ADA, 200.0, claim_s=CLAIM_S)  # type: ignore[arg-type]
        assert refused.value.conflict


def test_autoban_flag_survives_a_decision() -> None:
    flagged = ReportStatus(autoban=True)
    assert change_status(flagged, "dismiss", ANA, 1.0, claim_s=CLAIM_S).autoban


def test_a_moderator_bans_up_to_the_limit_and_never_for_ever() -> None:
    assert may_ban(ANA, 7 * DAY, 7 * DAY)
    assert not may_ban(ANA, 7 * DAY + 1, 7 * DAY)
    assert not may_ban(ANA, None, 7 * DAY)
    assert may_ban(ADA, None, 7 * DAY)
    assert may_ban(TOKEN_ACTOR, 365 * DAY, 7 * DAY)


def test_a_moderator_lifts_only_bans_within_the_limit() -> None:
    auto = Ban("10.0.0.1", "reported by 3 people", 1000.0 + DAY, 1000.0, by="auto")
    long = Ban("10.0.0.1", "x", 1000.0 + 30 * DAY, 1000.0, by="ada")
    forever = Ban("10.0.0.1", "x", None, 1000.0, by="ada")
    assert may_lift(ANA, auto, 7 * DAY)
    assert not may_lift(ANA, long, 7 * DAY)
    assert not may_lift(ANA, forever, 7 * DAY)
    assert may_lift(ADA, forever, 7 * DAY)
