"""Unit tests for match tickets (omiro_trio.tokens.TicketSigner) and the seats of
matches being resumed (omiro_trio.seats). Plain synchronous pytest, time passed in."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from omiro_trio.codes import ErrorCode
from omiro_trio.errors import InvalidTicket
from omiro_trio.protocol import MODES
from omiro_trio.seats import MAX_RECORDS, Hold, Pair, Refuse, Seats
from omiro_trio.tokens import Ticket, TicketSigner, TokenSigner

SECRET = b"s" * 32
TTL_S = 7200
NOW = 1_700_000_000.5
A, B, C = (str(uuid.uuid4()) for _ in range(3))
MATCH = uuid.uuid4().hex


def signer(secret: bytes = SECRET) -> TicketSigner:
    return TicketSigner(secret, TTL_S)


def refused(ticket: str, now: float = NOW, secret: bytes = SECRET) -> ErrorCode:
    with pytest.raises(InvalidTicket) as info:
        signer(secret).verify(ticket, now)
    return info.value.code


@pytest.mark.rule("protocol/match-tickets")
def test_a_ticket_names_the_match_both_sessions_the_roles_and_its_holder() -> None:
    for holder, seat in ((A, "caller"), (B, "callee")):
        ticket = signer().issue(MATCH, A, B, holder, "video", NOW)
        verified = signer().verify(ticket, NOW + TTL_S - 1)
        assert verified == Ticket(MATCH, A, B, holder, "video", int(NOW) + TTL_S)
        assert verified.seat == seat
    text = signer().issue("m1", "a", "b", "b", "text", NOW)
    assert text.startswith("m1.a.b.e.text.")


@pytest.mark.rule("protocol/match-tickets")
def test_a_forged_ticket_is_refused_as_bad_ticket() -> None:
    ticket = signer().issue(MATCH, A, B, A, "video", NOW)
    payload, signature = ticket.rsplit(".", 1)
    assert refused(ticket, secret=b"t" * 32) == ErrorCode.BAD_TICKET  # another service's
    # The holder changed (A's ticket made into B's), the partner swapped for C,
    # the expiry stretched: the signature no longer holds.
    for forged in (
        ticket.replace(".c.", ".e."),
        ticket.replace(B, C),
        payload.rsplit(".", 1)[0] + f".{int(NOW) + 10 * TTL_S}.{signature}",
        f"{payload}.{'0' * 64}",
    ):
        assert refused(forged) == ErrorCode.BAD_TICKET
    # A session token is never a ticket, though both carry the same secret's HMAC.
    token = TokenSigner(SECRET, 600).issue(NOW).token
    assert refused(token) == ErrorCode.BAD_TICKET


@pytest.mark.rule("protocol/match-tickets")
def test_an_expired_ticket_is_refused_as_expired_only_when_signed() -> None:
    ticket = signer().issue(MATCH, A, B, B, "video", NOW)
    assert refused(ticket, now=int(NOW) + TTL_S) == ErrorCode.TICKET_EXPIRED
    forged = ticket[:-1] + ("0" if ticket[-1] != "0" else "1")
    assert refused(forged, now=NOW + 10 * TTL_S) == ErrorCode.BAD_TICKET


@pytest.mark.rule("protocol/match-tickets")
def test_a_match_of_every_mode_gets_a_ticket() -> None:
    # A voice call outlives its server like a video call: its mode fits a ticket.
    for mode in MODES:
        ticket = signer().issue(MATCH, A, B, A, mode, NOW)
        assert signer().verify(ticket, NOW).mode == mode


def test_issue_refuses_what_a_ticket_cannot_carry() -> None:
    with pytest.raises(ValueError, match="not in match"):
        signer().issue(MATCH, A, B, C, "video", NOW)
    with pytest.raises(ValueError, match="cannot be put in a ticket"):
        signer().issue("m.1", A, B, A, "video", NOW)


@given(st.text(max_size=600))
def test_verify_raises_only_invalid_ticket(text: str) -> None:
    with pytest.raises(InvalidTicket):
        signer().verify(text, NOW)


def test_verify_bounds_its_work_before_any_hmac() -> None:
    assert refused("a" * 100_000) == ErrorCode.BAD_TICKET
    assert refused("." * 400) == ErrorCode.BAD_TICKET


# -- seats --------------------------------------------------------------------------------

GRACE_S = 30.0


def ticket(holder: str, match_id: str = MATCH) -> Ticket:
    return Ticket(match_id, A, B, holder, "video", int(NOW) + TTL_S)


def seats() -> Seats:
    return Seats(grace_s=GRACE_S, keep_s=TTL_S)


@pytest.mark.rule("protocol/resume")
def test_the_first_seat_is_held_the_second_pairs_then_both_are_used() -> None:
    desk = seats()
    assert desk.claim(ticket(A), "a2", 0.0) == Hold(GRACE_S)
    assert desk.claim(ticket(A), "x", 1.0) == Refuse(
        ErrorCode.TICKET_USED, "this ticket's seat was taken back already"
    )
    assert desk.claim(ticket(B), "b2", 2.0) == Pair("a2")
    # Replayed after the pair formed, by anyone: refused, for the ticket's life.
    for holder in (A, B):
        verdict = desk.claim(ticket(holder), "c", 3.0 + TTL_S - 10)
        assert isinstance(verdict, Refuse)
        assert verdict.code == ErrorCode.TICKET_USED


@pytest.mark.rule("protocol/resume")
def test_a_seat_given_up_or_a_match_ended_here_makes_the_match_over() -> None:
    desk = seats()
    assert desk.claim(ticket(A), "a2", 0.0) == Hold(GRACE_S)
    desk.give_up(MATCH, "a2", GRACE_S)  # the grace passed (or a2 left)
    verdict = desk.claim(ticket(B), "b2", GRACE_S + 1)
    assert isinstance(verdict, Refuse)
    assert verdict.code == ErrorCode.MATCH_OVER
    other = uuid.uuid4().hex
    desk.ended(other, 5.0)  # it ended on this server: the partner moved on
    verdict = desk.claim(ticket(A, other), "a3", 6.0)
    assert isinstance(verdict, Refuse)
    assert verdict.code == ErrorCode.MATCH_OVER


def test_give_up_by_someone_else_or_after_pairing_changes_nothing() -> None:
    desk = seats()
    desk.claim(ticket(A), "a2", 0.0)
    desk.give_up(MATCH, "intruder", 1.0)
    assert desk.claim(ticket(B), "b2", 2.0) == Pair("a2")
    desk.give_up(MATCH, "a2", 3.0)
    verdict = desk.claim(ticket(A), "a3", 4.0)
    assert isinstance(verdict, Refuse)
    assert verdict.code == ErrorCode.TICKET_USED


def test_unpair_frees_the_seat_again() -> None:
    desk = seats()
    desk.claim(ticket(A), "a2", 0.0)
    assert desk.claim(ticket(B), "b2", 1.0) == Pair("a2")
    desk.unpair(MATCH, "b2")
    assert desk.claim(ticket(B), "b3", 2.0) == Pair("a2")


def test_a_pending_seat_forgotten_after_its_grace_turns_over() -> None:
    desk = seats()
    desk.claim(ticket(A), "a2", 0.0)
    verdict = desk.claim(ticket(B), "b2", GRACE_S + 1)  # pruned first: a2 never got b2
    assert isinstance(verdict, Refuse)
    assert verdict.code == ErrorCode.MATCH_OVER


def test_records_are_bounded_whatever_clients_claim() -> None:
    desk = seats()
    for n in range(MAX_RECORDS + 50):
        desk.claim(ticket(A, f"m{n}"), f"s{n}", 0.0)
    assert len(desk) == MAX_RECORDS
