"""Errors a user can understand: camera refused, banned, rate limited."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.browser

DENY_CAMERA_JS = """
navigator.mediaDevices.getUserMedia = async () => {
  window.__denied = (window.__denied || 0) + 1;
  throw new DOMException("Permission denied", "NotAllowedError");
};
"""
ADMIN_TOKEN = "browser-test-admin-token-32-bytes-long"


def test_camera_denied_offers_text_mode(server, people):
    alice = people(server, "alice", init_script=DENY_CAMERA_JS)
    alice.start()
    alice.wait_state("blocked")
    notice = alice.testid("notice")
    assert "blocked" in notice.inner_text()
    assert alice.js("() => window.__denied") == 1
    assert alice.testid("start").is_visible()  # nothing half-started

    alice.testid("use-text").click()
    alice.wait_state("waiting")
    assert alice.testid("text-mode").is_checked()
    assert notice.is_hidden()

    bob = people(server, "bob")
    bob.start(text=True)
    for person in (alice, bob):
        person.wait_state("connected")
    assert alice.js("() => window.__denied") == 1  # text mode did not ask again
    assert alice.probe()["created"] == 0


def test_rate_limited_session_is_retried_after_the_delay(server, people):
    alice = people(server, "alice")
    refused = []

    def once_429(route):
        if refused:
            route.continue_()
            return
        refused.append(route.request.url)
        route.fulfill(
            status=429,
            headers={"Retry-After": "1", "Content-Type": "application/json"},
            body=json.dumps({"error": "rate_limited", "message": "slow down", "retry_after": 1}),
        )

    alice.page.route("**/session/new", once_429)
    alice.start(text=True)
    alice.wait_state("reconnecting")
    assert "Too many new connections" in alice.testid("status").inner_text()
    assert "Trying again in" in alice.testid("notice").inner_text()
    alice.wait_state("waiting")  # after retry_after (+ jitter), by itself
    assert len(refused) == 1
    assert alice.testid("notice").is_hidden()


def test_banned_by_session_new_shows_ban_and_stops(server, people):
    alice = people(server, "alice")
    alice.page.route(
        "**/session/new",
        lambda route: route.fulfill(
            status=403,
            content_type="application/json",
            body=json.dumps({"error": "banned", "message": "Spam.", "until": None}),
        ),
    )
    alice.start()
    alice.wait_state("blocked")
    text = alice.testid("notice").inner_text()
    assert "You have been banned from Omiro." in text
    assert "Spam." in text
    assert alice.testid("start").is_disabled()
    probe = alice.probe()
    assert probe["liveTracks"] == 0, probe  # the camera was let go


def test_real_ban_closes_the_socket_and_refuses_new_sessions(make_server, people):
    server = make_server(OMIRO_ADMIN_TOKEN=ADMIN_TOKEN)
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    alice = people(server, "alice")
    alice.start(text=True)
    alice.wait_state("waiting")

    ban = server.get_json(
        "/admin/bans",
        method="POST",
        headers=auth,
        body={"target": "127.0.0.1", "duration_s": 600, "reason": "browser test"},
    )
    assert ban.get("target") == "127.0.0.1", ban
    # Banned while connected: close code 1008, and the page says so.
    alice.wait_state("blocked")
    assert "banned" in alice.testid("notice").inner_text()
    assert alice.testid("start").is_disabled()

    # A new visitor from the banned address is told at once (403 from session/new).
    bob = people(server, "bob")
    bob.start(text=True)
    bob.wait_state("blocked")
    assert "until" in bob.testid("notice").inner_text()
