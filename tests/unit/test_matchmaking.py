"""Unit tests for omiro_trio.matchmaking: the matching rules as pure state.

Plain synchronous pytest; time is passed in as ``now`` and match ids come
from a counter, so every rule is checked exactly, including its boundaries.
A hypothesis state machine then drives random join/widen/leave/block/time
sequences against a small model and checks the invariants after every step.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from omiro_trio.matchmaking import (
    GENERAL,
    GENERATIONS,
    ExpiringKeys,
    Match,
    Matchmaker,
    Preferences,
    Waiting,
    pair_key,
)

INTEREST_TIMEOUT_S = 10.0
COOLDOWN_S = 30.0
BLOCK_TTL_S = 60.0
# Cooldowns and blocks end at least their duration after they start, and
# up to one bucket (a GENERATIONS-th of it) later.
COOLDOWN_LATE_S = COOLDOWN_S / GENERATIONS
BLOCK_LATE_S = BLOCK_TTL_S / GENERATIONS


def matchmaker(
    *,
    interest_timeout_s: float = INTEREST_TIMEOUT_S,
    rematch_cooldown_s: float = COOLDOWN_S,
    block_ttl_s: float = BLOCK_TTL_S,
) -> Matchmaker:
    ids = itertools.count(1)
    return Matchmaker(
        interest_timeout_s=interest_timeout_s,
        rematch_cooldown_s=rematch_cooldown_s,
        block_ttl_s=block_ttl_s,
        new_match_id=lambda: f"m{next(ids)}",
    )


def prefs(*interests: str, mode: str = "video") -> Preferences:
    return Preferences(mode=mode, interests=interests)


def waits(result: Match | Waiting) -> Waiting:
    assert isinstance(result, Waiting), f"expected to wait, got {result}"
    return result


def matched(result: Match | Waiting | None) -> Match:
    assert isinstance(result, Match), f"expected a match, got {result}"
    return result


def former_partners(mm: Matchmaker, a: str, b: str, now: float) -> None:
    """Match ``a`` with ``b`` and end the match at ``now``: their cooldown starts."""
    waits(mm.join(a, prefs(), now))
    matched(mm.join(b, prefs(), now))
    assert mm.leave(a, now) is not None


# -- Match ----------------------------------------------------------------


def test_match_partner_of_and_should_call() -> None:
    match = Match("m1", caller="a", callee="b", mode="video", common_interests=())
    assert match.partner_of("a") == "b"
    assert match.partner_of("b") == "a"
    assert match.should_call("a")
    assert not match.should_call("b")


def test_match_partner_of_rejects_a_stranger() -> None:
    match = Match("m1", caller="a", callee="b", mode="video", common_interests=())
    with pytest.raises(ValueError, match="not in match m1"):
        match.partner_of("c")


# -- join: basics, modes, order, caller -------------------------------------


def test_join_first_session_waits_without_widen_timer() -> None:
    mm = matchmaker()
    waiting = waits(mm.join("a", prefs(), 0.0))
    assert waiting.widen_after_s is None
    assert mm.state_of("a") == "waiting"
    assert mm.match_of("a") is None


def test_join_with_interests_waits_with_widen_timer() -> None:
    mm = matchmaker()
    waiting = waits(mm.join("a", prefs("music"), 0.0))
    assert waiting.widen_after_s == INTEREST_TIMEOUT_S


def test_join_tickets_are_fresh_for_every_wait() -> None:
    mm = matchmaker()
    first = waits(mm.join("a", prefs("music"), 0.0))
    mm.leave("a", 1.0)
    second = waits(mm.join("a", prefs("music"), 2.0))
    third = waits(mm.join("b", prefs("books"), 2.0))
    assert len({first.ticket, second.ticket, third.ticket}) == 3


def test_join_second_session_matches_the_waiting_one() -> None:
    mm = matchmaker()
    waits(mm.join("a", prefs(), 0.0))
    match = matched(mm.join("b", prefs(), 1.0))
    assert match == Match("m1", caller="a", callee="b", mode="video", common_interests=())
    assert match.should_call("a")
    assert not match.should_call("b")
    assert mm.match_of("a") is match
    assert mm.match_of("b") is match
    assert mm.state_of("a") == mm.state_of("b") == "matched"


def test_join_match_ids_come_from_the_injected_factory() -> None:
    mm = matchmaker()
    for a, b in [("a", "b"), ("c", "d")]:
        waits(mm.join(a, prefs(), 0.0))
        matched(mm.join(b, prefs(), 0.0))
    assert matched(mm.match_of("a")).match_id == "m1"
    assert matched(mm.match_of("c")).match_id == "m2"


def test_join_modes_never_mix() -> None:
    mm = matchmaker()
    waits(mm.join("v", prefs(mode="video"), 0.0))
    waits(mm.join("t", prefs(mode="text"), 1.0))
    assert mm.waiting_count() == 2
    match = matched(mm.join("t2", prefs(mode="text"), 2.0))
    assert (match.caller, match.callee, match.mode) == ("t", "t2", "text")
    assert mm.state_of("v") == "waiting"


def test_join_modes_never_mix_with_shared_interests() -> None:
    mm = matchmaker()
    waits(mm.join("v", prefs("music", mode="video"), 0.0))
    waits(mm.join("t", prefs("music", mode="text"), 1.0))
    assert mm.state_of("v") == mm.state_of("t") == "waiting"


def test_widen_modes_never_mix() -> None:
    mm = matchmaker()
    waits(mm.join("t", prefs(mode="text"), 0.0))
    ticket = waits(mm.join("v", prefs("music", mode="video"), 1.0)).ticket
    assert mm.widen("v", ticket, 11.0) is None
    assert mm.state_of("t") == mm.state_of("v") == "waiting"


def test_join_takes_the_oldest_partner_across_interest_queues() -> None:
    mm = matchmaker()
    waits(mm.join("young", prefs("books"), 5.0))
    waits(mm.join("old", prefs("music"), 1.0))
    match = matched(mm.join("c", prefs("books", "music"), 6.0))
    assert match.caller == "old"
    assert match.common_interests == ("music",)
    assert mm.state_of("young") == "waiting"


def test_join_takes_the_oldest_partner_in_the_general_queue() -> None:
    mm = matchmaker()
    # Blocked, so that both stay waiting side by side.
    mm.block("a", "b", 0.0)
    waits(mm.join("a", prefs(), 1.0))
    waits(mm.join("b", prefs(), 2.0))
    assert matched(mm.join("c", prefs(), 3.0)).caller == "a"
    assert matched(mm.join("d", prefs(), 4.0)).caller == "b"


def test_join_takes_the_oldest_partner_in_an_interest_queue() -> None:
    mm = matchmaker()
    mm.block("a", "b", 0.0)
    waits(mm.join("a", prefs("music"), 1.0))
    waits(mm.join("b", prefs("music"), 2.0))
    assert matched(mm.join("c", prefs("music"), 3.0)).caller == "a"


@pytest.mark.rule("protocol/anyone-line")
def test_general_queue_is_first_come_by_entry_after_a_widen() -> None:
    """The "anyone" line is ordered by when each session entered it (docs/protocol.md)."""
    mm = matchmaker()
    mm.block("early", "late", 0.0)
    ticket = waits(mm.join("early", prefs("music"), 0.0)).ticket
    waits(mm.join("late", prefs(), 1.0))
    # "late" is blocked for "early", so the widen finds nobody and "early"
    # enters the general queue behind "late", who entered it first.
    assert mm.widen("early", ticket, INTEREST_TIMEOUT_S) is None
    match = matched(mm.join("c", prefs(), 11.0))
    assert match.caller == "late"
    # "early" is next in line, and still found at once by a shared interest.
    assert matched(mm.join("d", prefs("music"), 12.0)).caller == "early"


def test_join_skips_blocked_waiters_to_the_next_one() -> None:
    mm = matchmaker()
    mm.block("a", "c", 0.0)
    mm.block("a", "b", 0.0)
    waits(mm.join("a", prefs(), 1.0))
    waits(mm.join("b", prefs(), 2.0))
    assert matched(mm.join("c", prefs(), 3.0)).caller == "b"


@pytest.mark.parametrize(
    ("first_since", "second_since", "caller"),
    [
        # "a" waited longer (joined first, then widened): it calls.
        (0.0, 5.0, "a"),
        # "b" waited longer in the general queue: it calls.
        (5.0, 0.0, "b"),
    ],
)
def test_widen_caller_is_whoever_waited_longer(
    first_since: float, second_since: float, caller: str
) -> None:
    mm = matchmaker()
    # Join in time order: "a" with interests, "b" without.
    order = sorted([(first_since, "a"), (second_since, "b")])
    tickets: dict[str, int] = {}
    for since, sid in order:
        p = prefs("music") if sid == "a" else prefs()
        tickets[sid] = waits(mm.join(sid, p, since)).ticket
    match = matched(mm.widen("a", tickets["a"], first_since + INTEREST_TIMEOUT_S))
    assert match.caller == caller
    assert match.partner_of(caller) == ({"a", "b"} - {caller}).pop()
    assert match.common_interests == ()


def test_widen_caller_tie_goes_to_the_waiting_side() -> None:
    mm = matchmaker()
    waits(mm.join("b", prefs(), 0.0))
    ticket = waits(mm.join("a", prefs("music"), 0.0)).ticket
    assert matched(mm.widen("a", ticket, 10.0)).caller == "b"


# -- interests -----------------------------------------------------------


def test_join_shared_interest_matches_at_once() -> None:
    mm = matchmaker()
    waits(mm.join("a", prefs("music", "books", "films"), 0.0))
    match = matched(mm.join("b", prefs("films", "games", "music"), 1.0))
    assert match.caller == "a"
    # In the joiner's order.
    assert match.common_interests == ("films", "music")


def test_join_with_interests_skips_a_no_interest_waiter_before_its_timeout() -> None:
    mm = matchmaker()
    waits(mm.join("a", prefs(), 0.0))
    waiting = waits(mm.join("b", prefs("music"), 1.0))
    assert waiting.widen_after_s == INTEREST_TIMEOUT_S
    assert mm.state_of("a") == mm.state_of("b") == "waiting"


def test_join_without_interests_skips_an_unwidened_interest_waiter() -> None:
    mm = matchmaker()
    waits(mm.join("a", prefs("music"), 0.0))
    waits(mm.join("b", prefs(), 1.0))
    assert mm.state_of("a") == mm.state_of("b") == "waiting"


def test_join_disjoint_interests_do_not_match_before_timeout() -> None:
    mm = matchmaker()
    waits(mm.join("a", prefs("music"), 0.0))
    waits(mm.join("b", prefs("books"), 1.0))
    assert mm.waiting_count() == 2


def test_widen_takes_anyone_in_the_mode() -> None:
    mm = matchmaker()
    waits(mm.join("a", prefs(), 0.0))
    ticket = waits(mm.join("b", prefs("music"), 1.0)).ticket
    match = matched(mm.widen("b", ticket, 11.0))
    assert {match.caller, match.callee} == {"a", "b"}
    assert match.common_interests == ()
    assert mm.waiting_count() == 0
    assert mm.matched_count() == 2


def test_widen_takes_a_widened_waiter_with_other_interests() -> None:
    mm = matchmaker()
    ticket_a = waits(mm.join("a", prefs("books"), 0.0)).ticket
    assert mm.widen("a", ticket_a, 10.0) is None
    ticket_b = waits(mm.join("b", prefs("music"), 1.0)).ticket
    match = matched(mm.widen("b", ticket_b, 11.0))
    assert match.caller == "a"
    assert match.common_interests == ()


def test_widen_does_not_take_an_unwidened_interest_waiter() -> None:
    mm = matchmaker()
    waits(mm.join("a", prefs("books"), 5.0))
    ticket = waits(mm.join("b", prefs("music"), 0.0)).ticket
    assert mm.widen("b", ticket, 10.0) is None
    assert mm.state_of("a") == mm.state_of("b") == "waiting"


def test_widen_with_nobody_available_enters_the_general_queue() -> None:
    mm = matchmaker()
    ticket = waits(mm.join("a", prefs("music"), 0.0)).ticket
    assert mm.widen("a", ticket, 10.0) is None
    assert mm.state_of("a") == "waiting"
    match = matched(mm.join("b", prefs(), 11.0))
    assert (match.caller, match.callee, match.common_interests) == ("a", "b", ())


def test_widen_twice_does_nothing_the_second_time() -> None:
    mm = matchmaker()
    ticket = waits(mm.join("a", prefs("music"), 0.0)).ticket
    assert mm.widen("a", ticket, 10.0) is None
    assert mm.widen("a", ticket, 11.0) is None
    assert mm.waiting_count() == 1
    matched(mm.join("b", prefs(), 12.0))
    # "a" was in the general queue once: the next joiner waits.
    waits(mm.join("c", prefs(), 13.0))
    assert mm.waiting_count() == 1


def test_widen_with_a_stale_ticket_after_leave_and_rejoin_does_nothing() -> None:
    mm = matchmaker()
    stale = waits(mm.join("a", prefs("music"), 0.0)).ticket
    mm.leave("a", 1.0)
    fresh = waits(mm.join("a", prefs("music"), 2.0)).ticket
    waits(mm.join("b", prefs(), 3.0))
    assert mm.widen("a", stale, 10.0) is None
    assert mm.state_of("a") == mm.state_of("b") == "waiting"
    # The wait's own ticket still works, and "a" was not put in the general
    # queue by the stale one.
    match = matched(mm.widen("a", fresh, 12.0))
    assert {match.caller, match.callee} == {"a", "b"}


def test_widen_with_a_stale_ticket_does_not_enter_the_general_queue() -> None:
    mm = matchmaker()
    stale = waits(mm.join("a", prefs("music"), 0.0)).ticket
    mm.leave("a", 1.0)
    waits(mm.join("a", prefs("music"), 2.0))
    assert mm.widen("a", stale, 10.0) is None
    waits(mm.join("b", prefs(), 11.0))
    assert mm.state_of("a") == mm.state_of("b") == "waiting"


def test_widen_of_an_idle_or_matched_session_does_nothing() -> None:
    mm = matchmaker()
    ticket = waits(mm.join("a", prefs("music"), 0.0)).ticket
    matched(mm.join("b", prefs("music"), 1.0))
    assert mm.widen("a", ticket, 10.0) is None
    assert mm.match_of("a") is not None
    assert mm.widen("nobody", ticket, 10.0) is None
    assert mm.state_of("nobody") == "idle"


def test_join_with_zero_interest_timeout_matches_anyone_at_once() -> None:
    mm = matchmaker(interest_timeout_s=0.0)
    waits(mm.join("a", prefs(), 0.0))
    match = matched(mm.join("b", prefs("music"), 1.0))
    assert (match.caller, match.callee, match.common_interests) == ("a", "b", ())


def test_join_with_zero_interest_timeout_waits_in_the_general_queue() -> None:
    mm = matchmaker(interest_timeout_s=0.0)
    waiting = waits(mm.join("a", prefs("music"), 0.0))
    assert waiting.widen_after_s is None
    assert matched(mm.join("b", prefs(), 1.0)).caller == "a"


def test_join_with_zero_interest_timeout_still_reports_common_interests() -> None:
    mm = matchmaker(interest_timeout_s=0.0)
    waits(mm.join("a", prefs("music", "books"), 0.0))
    match = matched(mm.join("b", prefs("books"), 1.0))
    assert match.common_interests == ("books",)


def test_join_finds_a_widened_waiter_with_interests_by_a_shared_one() -> None:
    mm = matchmaker()
    ticket = waits(mm.join("a", prefs("music", "books"), 0.0)).ticket
    assert mm.widen("a", ticket, 10.0) is None
    match = matched(mm.join("b", prefs("books"), 11.0))
    assert (match.caller, match.callee, match.common_interests) == ("a", "b", ("books",))


# -- blocks ----------------------------------------------------------------


# -- languages ---------------------------------------------------------------


def speaks(*languages: str, interests: tuple[str, ...] = (), mode: str = "video") -> Preferences:
    return Preferences(mode=mode, interests=interests, languages=languages)


@pytest.mark.rule("protocol/languages")
def test_join_shared_language_matches_at_once_and_is_told() -> None:
    mm = matchmaker()
    waits(mm.join("a", speaks("pt", "es"), 0.0))
    match = matched(mm.join("b", speaks("en", "es"), 1.0))
    assert (match.caller, match.common_languages, match.common_interests) == ("a", ("es",), ())


@pytest.mark.rule("protocol/languages")
def test_join_prefers_a_shared_language_over_an_older_stranger() -> None:
    mm = matchmaker()
    waits(mm.join("de", speaks("de"), 0.0))  # waited longest, speaks another language
    waits(mm.join("pt", speaks("pt"), 1.0))
    match = matched(mm.join("me", speaks("pt"), 2.0))
    assert match.partner_of("me") == "pt"
    assert mm.state_of("de") == "waiting"


@pytest.mark.rule("protocol/languages")
def test_languages_are_a_preference_not_a_filter() -> None:
    """After the interest timeout, anyone in the mode: no shared language needed."""
    mm = matchmaker()
    ticket = waits(mm.join("de", speaks("de"), 0.0)).ticket
    assert waits(mm.join("pt", speaks("pt"), 1.0)).widen_after_s == INTEREST_TIMEOUT_S
    assert mm.widen("de", ticket, INTEREST_TIMEOUT_S) is None  # nobody in the general line yet
    match = matched(mm.widen("pt", 2, 1.0 + INTEREST_TIMEOUT_S))
    assert (match.caller, match.callee) == ("de", "pt")
    assert match.common_languages == ()


def test_join_without_languages_or_interests_skips_an_unwidened_speaker() -> None:
    mm = matchmaker()
    waits(mm.join("pt", speaks("pt"), 0.0))
    waits(mm.join("anyone", prefs(), 1.0))
    assert mm.state_of("pt") == "waiting"


def test_a_language_and_an_interest_of_the_same_name_never_meet() -> None:
    mm = matchmaker()
    waits(mm.join("a", prefs("pt"), 0.0))  # an interest called "pt"
    waits(mm.join("b", speaks("pt"), 1.0))  # the language
    assert mm.state_of("a") == mm.state_of("b") == "waiting"


def test_a_shared_interest_or_a_shared_language_will_do_before_the_timeout() -> None:
    mm = matchmaker()
    waits(mm.join("a", speaks("de", interests=("chess",)), 0.0))
    match = matched(mm.join("b", speaks("pt", interests=("chess",)), 1.0))
    assert (match.common_interests, match.common_languages) == (("chess",), ())
    waits(mm.join("c", speaks("pt", interests=("jazz",)), 2.0))
    match = matched(mm.join("d", speaks("pt", "en", interests=("chess",)), 3.0))
    assert (match.common_interests, match.common_languages) == ((), ("pt",))


def test_voice_only_meets_voice_only() -> None:
    mm = matchmaker()
    waits(mm.join("video", prefs(), 0.0))
    waits(mm.join("text", prefs(mode="text"), 0.0))
    waits(mm.join("voice", prefs(mode="voice"), 1.0))
    match = matched(mm.join("voice2", prefs(mode="voice"), 2.0))
    assert (match.caller, match.mode) == ("voice", "voice")


def test_leave_takes_a_speaker_out_of_its_language_lines() -> None:
    mm = matchmaker()
    ticket = waits(mm.join("a", speaks("pt", "es"), 0.0)).ticket
    assert mm.widen("a", ticket, INTEREST_TIMEOUT_S) is None
    assert mm.leave("a", INTEREST_TIMEOUT_S) is None
    for p in (speaks("pt"), speaks("es"), prefs()):
        waits(mm.join(f"joiner-{p.languages}", p, INTEREST_TIMEOUT_S))


def aged(band: str, *interests: str, mode: str = "video") -> Preferences:
    return Preferences(mode=mode, interests=interests, band=band)


@pytest.mark.rule("protocol/age-bands")
def test_age_bands_two_adults_match() -> None:
    mm = matchmaker()
    waits(mm.join("a1", aged("adult"), 0.0))
    match = matched(mm.join("a2", aged("adult"), 1.0))
    assert (match.caller, match.callee, match.mode) == ("a1", "a2", "video")


@pytest.mark.rule("protocol/age-bands")
def test_age_bands_an_adult_and_a_minor_never_meet_even_after_widening() -> None:
    mm = matchmaker()
    adult = waits(mm.join("adult", aged("adult", "music"), 0.0))
    minor = waits(mm.join("minor", aged("minor", "music"), 0.0))
    assert mm.widen("adult", adult.ticket, INTEREST_TIMEOUT_S) is None
    assert mm.widen("minor", minor.ticket, INTEREST_TIMEOUT_S) is None
    minors = matched(mm.join("minor-plain", aged("minor"), INTEREST_TIMEOUT_S + 1))
    assert (minors.caller, minors.callee) == ("minor", "minor-plain")
    adults = matched(mm.join("adult-plain", aged("adult"), INTEREST_TIMEOUT_S + 2))
    assert (adults.caller, adults.callee) == ("adult", "adult-plain")


@pytest.mark.rule("protocol/age-bands")
def test_age_bands_unknown_meets_only_unknown() -> None:
    mm = matchmaker()
    waits(mm.join("adult", aged("adult"), 0.0))
    waits(mm.join("minor", aged("minor"), 0.0))
    waits(mm.join("unknown", prefs(), 1.0))
    match = matched(mm.join("unknown2", prefs(), 2.0))
    assert (match.caller, match.callee) == ("unknown", "unknown2")
    assert mm.waiting_count() == 2


@pytest.mark.rule("protocol/age-bands")
@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(("adult", "minor", "")), st.sampled_from(("video", "text"))),
        min_size=2,
        max_size=30,
    )
)
def test_age_bands_randomized_no_match_crosses_bands(joins: list[tuple[str, str]]) -> None:
    mm = matchmaker(interest_timeout_s=0.0)
    pool_of_session: dict[str, tuple[str, str]] = {}
    band_of: dict[str, str] = {}
    for n, (band, mode) in enumerate(joins):
        sid = f"s{n}"
        band_of[sid] = band
        pool_of_session[sid] = (band, mode)
        result = mm.join(sid, aged(band, mode=mode), float(n))
        if isinstance(result, Match):
            assert band_of[result.caller] == band_of[result.callee] == band
            assert result.mode == mode
    # Everyone left waiting is alone in their pool: no pair was kept apart
    # that the rules allowed to meet.
    pools = [pool_of_session[s] for s in mm.waiting_ids()]
    assert len(pools) == len(set(pools))


@pytest.mark.rule("protocol/matching-rules")
def test_block_prevents_a_match_even_when_nobody_else_waits() -> None:
    mm = matchmaker()
    mm.block("a", "b", 0.0)
    waits(mm.join("a", prefs(), 1.0))
    waits(mm.join("b", prefs(), 2.0))
    assert mm.state_of("a") == mm.state_of("b") == "waiting"


def test_block_works_in_both_directions() -> None:
    mm = matchmaker()
    mm.block("a", "b", 0.0)
    waits(mm.join("b", prefs(), 1.0))
    waits(mm.join("a", prefs(), 2.0))
    assert mm.is_blocked("b", "a", 2.0)
    assert mm.is_blocked("a", "b", 2.0)


def test_block_prevents_a_match_through_a_shared_interest_and_widen() -> None:
    mm = matchmaker()
    mm.block("a", "b", 0.0)
    ticket_a = waits(mm.join("a", prefs("music"), 0.0)).ticket
    ticket_b = waits(mm.join("b", prefs("music"), 1.0)).ticket
    assert mm.widen("a", ticket_a, 10.0) is None
    assert mm.widen("b", ticket_b, 11.0) is None
    assert mm.waiting_count() == 2


def test_block_expires_after_block_ttl() -> None:
    mm = matchmaker()
    mm.block("a", "b", 0.0)
    assert mm.is_blocked("a", "b", BLOCK_TTL_S - 0.001)
    assert not mm.is_blocked("a", "b", BLOCK_TTL_S + BLOCK_LATE_S)
    waits(mm.join("a", prefs(), BLOCK_TTL_S - 1))
    waits(mm.join("b", prefs(), BLOCK_TTL_S - 0.5))
    mm.leave("b", BLOCK_TTL_S + BLOCK_LATE_S)
    match = matched(mm.join("b", prefs(), BLOCK_TTL_S + BLOCK_LATE_S))
    assert (match.caller, match.callee) == ("a", "b")


def test_block_renewed_extends_the_ttl() -> None:
    mm = matchmaker()
    mm.block("a", "b", 0.0)
    mm.block("b", "a", 30.0)
    assert mm.is_blocked("a", "b", BLOCK_TTL_S + 1)
    assert not mm.is_blocked("a", "b", 30.0 + BLOCK_TTL_S + BLOCK_LATE_S)


def test_block_does_not_affect_other_pairs() -> None:
    mm = matchmaker()
    mm.block("a", "b", 0.0)
    waits(mm.join("a", prefs(), 1.0))
    assert matched(mm.join("c", prefs(), 2.0)).caller == "a"


# -- cooldown --------------------------------------------------------------


def test_cooldown_skips_a_former_partner_while_someone_else_is_available() -> None:
    mm = matchmaker()
    former_partners(mm, "a", "b", 0.0)
    # "a" waits longer than "c", and each waits for a different interest so
    # that they do not match each other.
    waits(mm.join("a", prefs("music"), 1.0))
    waits(mm.join("c", prefs("books"), 2.0))
    match = matched(mm.join("b", prefs("music", "books"), 3.0))
    assert match.caller == "c"
    assert mm.state_of("a") == "waiting"


def test_cooldown_skips_a_former_partner_in_the_general_queue() -> None:
    mm = matchmaker()
    former_partners(mm, "a", "b", 0.0)
    mm.block("a", "c", 0.0)
    waits(mm.join("a", prefs(), 1.0))
    waits(mm.join("c", prefs(), 2.0))
    assert matched(mm.join("b", prefs(), 3.0)).caller == "c"


def test_cooldown_skips_a_former_partner_on_widen() -> None:
    mm = matchmaker()
    former_partners(mm, "a", "b", 0.0)
    mm.block("a", "c", 0.0)
    waits(mm.join("a", prefs(), 1.0))
    waits(mm.join("c", prefs(), 2.0))
    ticket = waits(mm.join("b", prefs("music"), 3.0)).ticket
    assert matched(mm.widen("b", ticket, 13.0)).partner_of("b") == "c"


@pytest.mark.parametrize("first", ["a", "b"])
def test_cooldown_former_partner_matched_when_nobody_else_is_available(first: str) -> None:
    mm = matchmaker()
    former_partners(mm, "a", "b", 0.0)
    second = "b" if first == "a" else "a"
    waits(mm.join(first, prefs(), 1.0))
    match = matched(mm.join(second, prefs(), 2.0))
    assert (match.caller, match.callee) == (first, second)


@pytest.mark.rule("protocol/nobody-else-waiting")
def test_cooldown_former_partner_matched_when_the_others_are_unavailable() -> None:
    mm = matchmaker()
    former_partners(mm, "a", "b", 0.0)
    mm.block("b", "c", 0.0)
    mm.block("a", "c", 0.0)
    waits(mm.join("c", prefs(), 1.0))  # blocked for b
    waits(mm.join("t", prefs(mode="text"), 1.0))  # another mode
    waits(mm.join("i", prefs("music"), 1.0))  # not in the general queue yet
    waits(mm.join("a", prefs(), 2.0))
    assert matched(mm.join("b", prefs(), 3.0)).caller == "a"


@pytest.mark.parametrize(
    ("now", "taken"),
    [(COOLDOWN_S - 0.001, "c"), (COOLDOWN_S + COOLDOWN_LATE_S, "a"), (COOLDOWN_S + 5, "a")],
)
def test_cooldown_former_partner_fresh_again_after_rematch_cooldown(now: float, taken: str) -> None:
    mm = matchmaker()
    former_partners(mm, "a", "b", 0.0)
    # "a" waited longest: once fresh it wins; while recent "c" is taken.
    waits(mm.join("a", prefs("music"), COOLDOWN_S - 2))
    waits(mm.join("c", prefs("books"), COOLDOWN_S - 1))
    assert matched(mm.join("b", prefs("music", "books"), now)).caller == taken


def test_cooldown_starts_when_the_match_ends_not_when_it_forms() -> None:
    mm = matchmaker()
    waits(mm.join("a", prefs(), 0.0))
    matched(mm.join("b", prefs(), 0.0))
    mm.leave("b", 100.0)
    mm.block("a", "c", 100.0)
    waits(mm.join("a", prefs(), 100.0 + COOLDOWN_S - 1))
    waits(mm.join("c", prefs(), 100.0 + COOLDOWN_S - 1))
    assert matched(mm.join("b", prefs(), 100.0 + COOLDOWN_S - 1)).caller == "c"


# -- prune -----------------------------------------------------------------


def test_prune_forgets_expired_cooldowns_and_blocks() -> None:
    mm = matchmaker()
    former_partners(mm, "a", "b", 0.0)
    mm.block("c", "d", 0.0)
    assert mm.held_entries() == 2
    mm.prune(BLOCK_TTL_S + BLOCK_LATE_S)
    # Nothing observable changes (expired entries already act as absent):
    # what prune is for is the memory, so count what is kept.
    assert mm.held_entries() == 0


def test_prune_keeps_cooldowns_and_blocks_still_running() -> None:
    mm = matchmaker()
    former_partners(mm, "a", "b", 0.0)
    mm.block("a", "c", 0.0)
    mm.prune(COOLDOWN_S - 1)
    assert mm.is_blocked("a", "c", COOLDOWN_S - 1)
    waits(mm.join("a", prefs(), COOLDOWN_S - 1))
    waits(mm.join("c", prefs(), COOLDOWN_S - 1))
    # The a/b cooldown survived the prune: "b" takes "c" although "a" is older.
    assert matched(mm.join("b", prefs(), COOLDOWN_S - 1)).caller == "c"


def test_prune_forgets_only_the_expired_ones() -> None:
    mm = matchmaker()
    mm.block("a", "b", 0.0)
    mm.block("a", "c", BLOCK_TTL_S)
    mm.prune(BLOCK_TTL_S + BLOCK_LATE_S)
    assert mm.held_entries() == 1
    assert mm.is_blocked("a", "c", BLOCK_TTL_S + 1)


# -- leave -----------------------------------------------------------------


def test_leave_from_waiting_removes_the_session_from_every_queue() -> None:
    mm = matchmaker()
    ticket = waits(mm.join("a", prefs("music", "books"), 0.0)).ticket
    assert mm.widen("a", ticket, 10.0) is None
    assert mm.leave("a", 11.0) is None
    assert mm.state_of("a") == "idle"
    assert mm.waiting_count() == 0
    for p in (prefs("music"), prefs("books"), prefs()):
        sid = f"joiner-{p.interests}"
        waits(mm.join(sid, p, 12.0))
        mm.leave(sid, 12.0)
    assert list(mm.waiting_ids()) == []


def test_leave_from_matched_ends_the_match_for_both() -> None:
    mm = matchmaker()
    waits(mm.join("a", prefs(), 0.0))
    match = matched(mm.join("b", prefs(), 1.0))
    assert mm.leave("b", 2.0) is match
    assert mm.state_of("a") == mm.state_of("b") == "idle"
    assert mm.match_of("a") is None
    assert mm.matched_count() == 0
    # The partner is idle, so it may join again.
    waits(mm.join("a", prefs(), 3.0))
    # A second leave of either side finds nothing to end.
    assert mm.leave("b", 3.0) is None


def test_leave_when_idle_returns_none() -> None:
    mm = matchmaker()
    assert mm.leave("nobody", 0.0) is None
    assert mm.state_of("nobody") == "idle"


def test_leave_of_one_match_leaves_other_matches_alone() -> None:
    mm = matchmaker()
    waits(mm.join("a", prefs(), 0.0))
    matched(mm.join("b", prefs(), 0.0))
    waits(mm.join("c", prefs(), 0.0))
    other = matched(mm.join("d", prefs(), 0.0))
    mm.leave("a", 1.0)
    assert mm.match_of("c") is other
    assert mm.match_of("d") is other
    assert mm.matched_count() == 2


@pytest.mark.parametrize("state", ["waiting", "matched"])
def test_join_when_not_idle_raises_value_error(state: str) -> None:
    mm = matchmaker()
    waits(mm.join("a", prefs(), 0.0))
    if state == "matched":
        matched(mm.join("b", prefs(), 0.0))
    with pytest.raises(ValueError, match=f"a is {state}, not idle"):
        mm.join("a", prefs("music"), 1.0)
    assert mm.state_of("a") == state
    if state == "matched":
        with pytest.raises(ValueError, match="b is matched"):
            mm.join("b", prefs(), 1.0)


# -- queries -----------------------------------------------------------------


def test_state_of_match_of_and_counts_follow_the_lifecycle() -> None:
    mm = matchmaker()
    assert (mm.waiting_count(), mm.matched_count()) == (0, 0)
    assert mm.state_of("a") == "idle"
    waits(mm.join("a", prefs(), 0.0))
    waits(mm.join("t", prefs(mode="text"), 0.0))
    assert (mm.waiting_count(), mm.matched_count()) == (2, 0)
    assert set(mm.waiting_ids()) == {"a", "t"}
    match = matched(mm.join("b", prefs(), 1.0))
    assert (mm.waiting_count(), mm.matched_count()) == (1, 2)
    assert list(mm.waiting_ids()) == ["t"]
    assert mm.match_of("a") is mm.match_of("b") is match
    assert mm.match_of("t") is None
    mm.leave("a", 2.0)
    mm.leave("t", 2.0)
    assert (mm.waiting_count(), mm.matched_count()) == (0, 0)
    assert {mm.state_of(s) for s in ("a", "b", "t")} == {"idle"}


# -- stateful --------------------------------------------------------------

SESSIONS = ("a", "b", "c", "d", "e", "f")
# Mostly one mode and few interests, so that sessions meet often.
MODES = ("video", "video", "video", "text")
INTERESTS = ("x", "y")
LANGUAGES = ("pt", "en")
# Age bands as a gate verifies them ("" unknown); each session keeps one.
BANDS = ("adult", "minor", "")
STEPS_S = (0.5, 1.0, INTEREST_TIMEOUT_S, COOLDOWN_S - 0.5, COOLDOWN_S, BLOCK_TTL_S + 1)


def _pair(a: str, b: str) -> frozenset[str]:
    return frozenset((a, b))


@dataclass
class _Wait:
    prefs: Preferences
    since: float
    ticket: int
    widened: bool

    def queues(self) -> set[tuple[str, str]]:
        names = _names(self.prefs)
        if self.widened:
            names.add(_GENERAL_LINE)
        return names


_GENERAL_LINE = ("general", GENERAL)


def _names(p: Preferences) -> set[tuple[str, str]]:
    """The model's lines a session's preferences put it in before its timeout: one
    per interest and one per language, kept apart."""
    return {("interest", i) for i in p.interests} | {("language", c) for c in p.languages}


def _common(mine: tuple[str, ...], theirs: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(x for x in mine if x in theirs)


class MatchmakerMachine(RuleBasedStateMachine):
    """Random operations on a ``Matchmaker`` against a model of its state.

    The model tracks each session's wait (preferences, since, ticket, the
    queues it is in), the matches, blocks and cooldowns, from what the
    operations return, and checks every match as it forms: partner
    compatible and not blocked, a former partner only when every candidate
    is one, caller, mode and common interests. Pairs left waiting side by
    side are tolerated only when a block kept them apart while both waited
    ("excused"): a block that runs out does not rematch anyone by itself.
    """

    @initialize(
        interest_timeout_s=st.sampled_from([0.0, INTEREST_TIMEOUT_S]),
        bands=st.lists(st.sampled_from(BANDS), min_size=len(SESSIONS), max_size=len(SESSIONS)),
    )
    def start(self, interest_timeout_s: float, bands: list[str]) -> None:
        ids = itertools.count(1)
        self.bands = dict(zip(SESSIONS, bands, strict=True))
        self.interest_timeout_s = interest_timeout_s
        self.mm = Matchmaker(
            interest_timeout_s=interest_timeout_s,
            rematch_cooldown_s=COOLDOWN_S,
            block_ttl_s=BLOCK_TTL_S,
            new_match_id=lambda: f"m{next(ids)}",
        )
        self.now = 0.0
        self.waiting: dict[str, _Wait] = {}
        self.matches: dict[str, Match] = {}
        self.tickets: dict[str, int] = {}
        self.all_tickets: set[int] = set()
        self.last_prefs: dict[str, Preferences] = {}
        self.blocks: dict[frozenset[str], float] = {}
        self.cooldowns: dict[frozenset[str], float] = {}
        self.excused: set[frozenset[str]] = set()
        # The documented end of a cooldown or block started now (see ExpiringKeys).
        self.cooldown_rule = ExpiringKeys(COOLDOWN_S)
        self.block_rule = ExpiringKeys(BLOCK_TTL_S)

    # -- model helpers ---------------------------------------------------

    def idle(self) -> list[str]:
        return [s for s in SESSIONS if s not in self.waiting and s not in self.matches]

    def blocked(self, a: str, b: str) -> bool:
        return self.blocks.get(_pair(a, b), float("-inf")) > self.now

    def recent(self, a: str, b: str) -> bool:
        return self.cooldowns.get(_pair(a, b), float("-inf")) > self.now

    def candidates(self, sid: str, mode: str, names: set[tuple[str, str]]) -> set[str]:
        """Waiting sessions the matchmaker may give ``sid`` searching ``names``."""
        return {
            other
            for other, wait in self.waiting.items()
            if other != sid
            and wait.prefs.mode == mode
            and wait.prefs.band == self.bands[sid]
            and wait.queues() & names
            and not self.blocked(sid, other)
        }

    def check_partner(self, sid: str, partner: str, candidates: set[str]) -> None:
        assert partner in candidates, f"{sid} matched {partner}, not one of {candidates}"
        if self.recent(sid, partner):
            assert all(self.recent(sid, c) for c in candidates), (
                f"{sid} took former partner {partner} over {candidates}"
            )

    def unwait(self, sid: str) -> None:
        del self.waiting[sid]
        self.excused = {p for p in self.excused if sid not in p}

    def formed(self, match: Match) -> None:
        assert self.bands[match.caller] == self.bands[match.callee], (
            f"{match} pairs age bands {self.bands[match.caller]!r} and {self.bands[match.callee]!r}"
        )
        for side in (match.caller, match.callee):
            assert side not in self.matches, f"{side} already in {self.matches[side]}"
            self.matches[side] = match

    def do_join(self, sid: str, p: Preferences) -> None:
        self.last_prefs[sid] = p
        widen_now = not (p.interests or p.languages) or self.interest_timeout_s <= 0
        names = _names(p) | ({_GENERAL_LINE} if widen_now else set())
        candidates = self.candidates(sid, p.mode, names)
        result = self.mm.join(sid, p, self.now)
        if isinstance(result, Waiting):
            assert not candidates, f"{sid} waits although {candidates} are available"
            assert result.widen_after_s == (None if widen_now else self.interest_timeout_s)
            assert result.ticket not in self.all_tickets
            self.all_tickets.add(result.ticket)
            self.tickets[sid] = result.ticket
            self.waiting[sid] = _Wait(p, self.now, result.ticket, widened=widen_now)
            return
        partner = result.partner_of(sid)
        self.check_partner(sid, partner, candidates)
        assert (result.caller, result.callee, result.mode) == (partner, sid, p.mode)
        theirs = self.waiting[partner].prefs
        assert result.common_interests == _common(p.interests, theirs.interests)
        assert result.common_languages == _common(p.languages, theirs.languages)
        self.unwait(partner)
        self.formed(result)

    def do_leave(self, sid: str) -> None:
        result = self.mm.leave(sid, self.now)
        if sid in self.waiting:
            assert result is None
            self.unwait(sid)
        elif sid in self.matches:
            match = self.matches.pop(sid)
            assert result is match
            del self.matches[match.partner_of(sid)]
            self.cooldowns[_pair(match.caller, match.callee)] = self.cooldown_rule.expires_at(
                self.now
            )
        else:
            assert result is None

    # -- rules -----------------------------------------------------------

    @precondition(lambda self: self.idle())
    @rule(
        data=st.data(),
        mode=st.sampled_from(MODES),
        interests=st.lists(st.sampled_from(INTERESTS), unique=True, max_size=2),
        languages=st.lists(st.sampled_from(LANGUAGES), unique=True, max_size=2),
    )
    def join(
        self, data: st.DataObject, mode: str, interests: list[str], languages: list[str]
    ) -> None:
        sid = data.draw(st.sampled_from(self.idle()), label="sid")
        self.do_join(sid, Preferences(mode, tuple(interests), tuple(languages), self.bands[sid]))

    @precondition(lambda self: self.waiting or self.matches)
    @rule(data=st.data())
    def join_when_busy(self, data: st.DataObject) -> None:
        sid = data.draw(st.sampled_from(sorted([*self.waiting, *self.matches])), label="sid")
        state = self.mm.state_of(sid)
        with pytest.raises(ValueError, match="not idle"):
            self.mm.join(sid, Preferences(), self.now)
        assert self.mm.state_of(sid) == state

    @rule(sid=st.sampled_from(SESSIONS), stale=st.booleans())
    def widen(self, sid: str, stale: bool) -> None:
        ticket = self.tickets.get(sid, 0) - (1 if stale else 0)
        wait = self.waiting.get(sid)
        if wait is None or wait.ticket != ticket or wait.widened:
            assert self.mm.widen(sid, ticket, self.now) is None
            return
        candidates = self.candidates(sid, wait.prefs.mode, {_GENERAL_LINE})
        result = self.mm.widen(sid, ticket, self.now)
        if result is None:
            assert not candidates, f"{sid} widened but left {candidates} waiting"
            wait.widened = True
            return
        partner = result.partner_of(sid)
        self.check_partner(sid, partner, candidates)
        other = self.waiting[partner]
        assert result.caller == (partner if other.since <= wait.since else sid)
        assert result.mode == wait.prefs.mode
        assert result.common_interests == _common(wait.prefs.interests, other.prefs.interests)
        assert result.common_languages == _common(wait.prefs.languages, other.prefs.languages)
        self.unwait(sid)
        self.unwait(partner)
        self.formed(result)

    @precondition(lambda self: self.matches)
    @rule(data=st.data())
    def next_partner(self, data: st.DataObject) -> None:
        """The ``next`` op: end the match and rejoin with the same preferences."""
        sid = data.draw(st.sampled_from(sorted(self.matches)), label="sid")
        self.do_leave(sid)
        self.do_join(sid, self.last_prefs[sid])

    @rule(sid=st.sampled_from(SESSIONS))
    def leave(self, sid: str) -> None:
        self.do_leave(sid)

    @rule(a=st.sampled_from(SESSIONS), b=st.sampled_from(SESSIONS))
    def block(self, a: str, b: str) -> None:
        if a == b:
            return
        self.mm.block(a, b, self.now)
        self.blocks[_pair(a, b)] = self.block_rule.expires_at(self.now)
        assert self.mm.is_blocked(a, b, self.now)

    @rule(step_s=st.sampled_from(STEPS_S))
    def advance_time(self, step_s: float) -> None:
        self.now += step_s

    @rule()
    def prune(self) -> None:
        self.mm.prune(self.now)

    # -- invariants --------------------------------------------------------

    @invariant()
    def states_agree_with_the_model(self) -> None:
        for sid in SESSIONS:
            if sid in self.waiting:
                expected = "waiting"
            elif sid in self.matches:
                expected = "matched"
            else:
                expected = "idle"
            assert self.mm.state_of(sid) == expected
            assert self.mm.match_of(sid) == self.matches.get(sid)
        assert set(self.mm.waiting_ids()) == set(self.waiting)

    @invariant()
    def each_session_in_at_most_one_state(self) -> None:
        for sid in self.mm.waiting_ids():
            assert self.mm.match_of(sid) is None, f"{sid} waits and is matched"

    @invariant()
    def matches_are_symmetric(self) -> None:
        for sid in SESSIONS:
            match = self.mm.match_of(sid)
            if match is None:
                continue
            partner = match.partner_of(sid)
            assert partner != sid
            assert self.mm.match_of(partner) is match
            assert match.partner_of(partner) == sid
            assert match.should_call(sid) != match.should_call(partner)

    @invariant()
    def counts_agree_with_state_of(self) -> None:
        states = [self.mm.state_of(sid) for sid in SESSIONS]
        assert self.mm.waiting_count() == states.count("waiting")
        assert self.mm.matched_count() == states.count("matched")

    @invariant()
    def no_available_pair_left_waiting(self) -> None:
        ids = sorted(self.waiting)
        for i, a in enumerate(ids):
            for b in ids[i + 1 :]:
                wa, wb = self.waiting[a], self.waiting[b]
                if wa.prefs.mode != wb.prefs.mode or not wa.queues() & wb.queues():
                    continue
                if wa.prefs.band != wb.prefs.band:
                    continue  # never available to each other (age bands)
                if self.blocked(a, b):
                    self.excused.add(_pair(a, b))
                    continue
                # Former partners count as available too: one is taken
                # when nobody else is, so they never wait side by side.
                assert _pair(a, b) in self.excused, f"{a} and {b} both wait, unmatched"


@pytest.mark.rule("protocol/matching-rules")
def test_matchmaker_state_machine_keeps_invariants() -> None:
    run_state_machine_as_test(
        MatchmakerMachine,
        settings=settings(max_examples=300, stateful_step_count=60, deadline=None),
    )


def test_prune_drops_whole_generations_so_its_work_is_bounded() -> None:
    """However many pairs a busy server forms, a prune touches few generations."""
    mm = matchmaker()
    pairs_per_s = 50
    for second in range(int(COOLDOWN_S * 4)):
        for n in range(pairs_per_s):
            former_partners(mm, f"a{second}-{n}", f"b{second}-{n}", float(second))
        # Every prune drops at most a few whole sets, however many pairs they hold.
        assert mm.prune(float(second)) <= 1
        assert mm._recent.generation_count() <= GENERATIONS + 1
        # Only the cooldowns of about the last COOLDOWN_S (+ a bucket) are kept.
        assert mm.held_entries() <= pairs_per_s * (COOLDOWN_S + COOLDOWN_LATE_S + 1)
    assert mm.in_cooldown("a100-0", "b100-0", 100.0 + COOLDOWN_S - 0.001)
    assert not mm.in_cooldown("a0-0", "b0-0", COOLDOWN_S + COOLDOWN_LATE_S)


@given(
    start=st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
    ttl_s=st.sampled_from([0.5, COOLDOWN_S, 300.0, 86400.0]),
    early_s=st.floats(min_value=1e-6, max_value=1.0),
)
def test_expiring_keys_hold_at_least_the_ttl_and_at_most_one_bucket_more(
    start: float, ttl_s: float, early_s: float
) -> None:
    keys = ExpiringKeys(ttl_s)
    key = pair_key("a", "b")
    keys.add(key, start)
    early = start + ttl_s - min(early_s, ttl_s)
    assert keys.holds(key, early)
    assert keys.holds(key, start)
    keys.prune(early)
    assert keys.holds(key, early)
    late = start + ttl_s + keys.bucket_s
    assert not keys.holds(key, late)
    assert keys.prune(late) == 1
    assert len(keys) == 0


def test_pair_key_is_symmetric_and_keeps_no_string() -> None:
    a, b = "".join(["x"] * 36), "".join(["y"] * 36)
    assert pair_key(a, b) == pair_key(b, a)
    assert pair_key(a, b) != pair_key(a, "z")
    assert isinstance(pair_key(a, b), int)
    assert pair_key(a, b).bit_length() <= 64


def test_cooldown_entry_is_far_smaller_than_a_tuple_of_two_ids() -> None:
    """Bytes per cooldown: a set entry, then 8 bytes once sealed; not a tuple of two ids."""
    import sys
    import uuid

    count = 4000
    mm = matchmaker(rematch_cooldown_s=300.0)
    ids = [str(uuid.uuid4()) for _ in range(2 * count)]
    for n in range(count):
        former_partners(mm, ids[2 * n], ids[2 * n + 1], 1.0)
    # The old record: a 2-tuple of the two id strings (kept alive by it) and a float.
    old = sys.getsizeof((ids[0], ids[1])) + 2 * sys.getsizeof(ids[0]) + sys.getsizeof(1.0)
    (_, keys), *_ = mm._recent._generations
    assert isinstance(keys, set)
    assert len(keys) == count
    open_bytes = (sys.getsizeof(keys) + sum(sys.getsizeof(k) for k in keys)) / count
    assert open_bytes < old / 2
    # A pair in the next bucket seals the first generation into a sorted array.
    former_partners(mm, "x", "y", 1.0 + mm.cooldown_bucket_s)
    (_, sealed), *_ = mm._recent._generations
    assert not isinstance(sealed, set)
    assert len(sealed) == count
    assert sys.getsizeof(sealed) / count < 9
    assert mm.in_cooldown(ids[0], ids[1], 2.0)  # still found, by bisection
    assert mm.in_cooldown(ids[1], ids[0], 2.0)
    assert not mm.in_cooldown(ids[0], ids[3], 2.0)


def test_expiring_keys_stay_bounded_without_a_prune() -> None:
    keys = ExpiringKeys(COOLDOWN_S)
    for n in range(2000):
        keys.add(n, n * 0.1)  # 200 s: more than six lifetimes, never pruned by hand
        assert keys.generation_count() <= GENERATIONS + 1
    assert keys.holds(1999, 199.9 + COOLDOWN_S - 0.001)
    assert not keys.holds(0, 199.9)
