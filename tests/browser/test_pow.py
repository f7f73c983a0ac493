"""Proof of work in the page: solved in the background, then matched and chatting.

The server asks every new session for proof of work at the default
difficulty (``[gate] pow_mode = "always"``); the page fetches a challenge
when it loads, solves it with the vendored ALTCHA solver in web workers,
and brings the solution to ``session/new``. The solve time itself is
measured by ``benchmarks/pow_solve.py``, not here.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.browser

LOG = "document.querySelector('[data-testid=chat-log]')"


def test_pow_page_solves_then_is_matched_and_chats(make_server, people):
    server = make_server(OMIRO_GATE_POW_MODE="always")
    # Without a solution the server refuses: the page is what brings one.
    refused = server.get_json("/session/new")
    assert (refused["status"], refused["error"], refused["reason"]) == (401, "pow", "required")
    alice = people(server, "alice")
    bob = people(server, "bob")
    asked: dict[str, list[str]] = {"alice": [], "bob": []}
    for person in (alice, bob):
        person.page.on(
            "request",
            lambda request, name=person.name: asked[name].append(
                request.url.rsplit("/", 1)[-1]
                + ("+pow" if request.headers.get("x-omiro-pow") else "")
            ),
        )
    for person in (alice, bob):
        person.start(text=True)
    for person in (alice, bob):
        person.wait_state("connected", timeout_ms=60_000)
    alice.testid("chat-input").fill("proved and matched")
    alice.testid("chat-input").press("Enter")
    bob.wait(f"() => {LOG}.textContent.includes('proved and matched')")
    bob.testid("chat-input").fill("me too")
    bob.testid("chat-input").press("Enter")
    alice.wait(f"() => {LOG}.textContent.includes('me too')")
    for name in ("alice", "bob"):
        # Each token was asked for with a solution; none went without one.
        tokens = [url for url in asked[name] if url.startswith("new")]
        assert tokens, name
        assert all(url.endswith("+pow") for url in tokens), (name, tokens)
