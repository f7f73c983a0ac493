"""A call outlives its server: ``omiro serve`` restarted under two pages in a call.

The server (memory backend, default drain settings) gets SIGTERM; a new
process with the same session secret starts on the same port. The pages
keep their peer connection and chat view, reconnect, and take their match
back with their tickets: the remote video never stalls for more than a
second, a line typed while reconnecting is delivered after the resume, and
no line is lost or duplicated.
"""

from __future__ import annotations

import signal

import pytest
from call_support import LINES, LONGEST_STALL_JS, SAMPLER_JS, STALL_LIMIT_S, heard, say

pytestmark = pytest.mark.browser

SECRET = "restart-keeps-call-" + "k" * 32


@pytest.mark.rule("protocol/resume", "protocol/msg-server-draining")
def test_a_restart_of_the_server_keeps_the_call_and_the_chat(make_server, pair):
    env = {"OMIRO_SESSION_SECRET": SECRET, "OMIRO_SERVER_DRAIN_GRACE_S": "10"}  # the default
    first = make_server(**env)
    alice, bob = pair(first)
    for person in (alice, bob):
        person.wait_media_flowing()
        person.js(SAMPLER_JS)
    say(alice, "before the restart")
    heard(bob, "before the restart")
    say(bob, "hi alice")
    heard(alice, "hi alice")
    created = [person.probe()["created"] for person in (alice, bob)]

    assert first.proc is not None
    first.proc.send_signal(signal.SIGTERM)
    # Both pages are told to reconnect and keep their call.
    for person in (alice, bob):
        person.wait("() => window.omiro.link.resuming", timeout_ms=5_000)
        assert person.state == "connected"
    assert first.proc.wait(15) == 0  # drained: every socket left, nothing was cut
    say(alice, "typed while reconnecting")
    assert alice.js(LINES, "you")[-1] == ["typed while reconnecting", "sending"]

    second = make_server(port=first.port, **env)  # a new process on the same port
    assert second.port == first.port
    for person in (alice, bob):
        person.wait("() => !window.omiro.link.resuming && window.omiro.signaling.ready", 30_000)
        assert person.state == "connected"
    heard(bob, "typed while reconnecting")
    say(bob, "after the restart")
    heard(alice, "after the restart")
    say(alice, "still here")
    heard(bob, "still here")
    alice.wait(
        "() => [...document.querySelectorAll('[data-testid=chat-log] > li.msg-you')]"
        ".every((li) => li.dataset.delivery === 'sent')"
    )

    # Nothing lost, nothing twice, in order, on both sides.
    assert [text for text, _ in bob.js(LINES, "stranger")] == [
        "before the restart",
        "typed while reconnecting",
        "still here",
    ]
    assert [text for text, _ in alice.js(LINES, "stranger")] == ["hi alice", "after the restart"]
    # The same peer connection all along, and the video never stalled for a second.
    assert [person.probe()["created"] for person in (alice, bob)] == created
    for person in (alice, bob):
        person.js("() => clearInterval(window.__videoSampler)")
        stall = person.js(LONGEST_STALL_JS)
        assert stall["samples"] > 20, stall
        print(
            f"{person.name}: longest stall {stall['longest']:.2f} s over {stall['samples']} samples"
        )
        assert stall["longest"] <= STALL_LIMIT_S, (person.name, stall)
        assert person.js("() => window.omiro.pc.connectionState") == "connected"


@pytest.mark.rule("protocol/msg-partner-away", "protocol/resume")
def test_one_socket_that_breaks_comes_back_and_the_partner_waited(make_server, people):
    """Alice's signaling goes through a proxy that breaks her connection (a network
    change); her media does not. Bob is told she is away, not gone; she resumes."""
    from proxy_support import SilentProxy

    server = make_server(OMIRO_SESSION_SECRET=SECRET)
    proxy = SilentProxy(server.port)
    try:
        alice = people(server, "alice", url=proxy.url + "/")
        bob = people(server, "bob")
        alice.start()
        alice.wait_state("waiting")
        bob.start()
        for person in (alice, bob):
            person.wait_call_connected()
        for person in (alice, bob):
            person.wait_media_flowing()
            person.js(SAMPLER_JS)
        say(bob, "before")
        heard(alice, "before")
        proxy.cut()
        bob.wait("() => window.omiro.link.partnerAway", timeout_ms=5_000)
        assert bob.testid("status").text_content() == (
            "The stranger's connection dropped. Waiting for them to come back…"
        )
        say(bob, "while you were away")
        for person in (alice, bob):
            person.wait(
                "() => !window.omiro.link.resuming && !window.omiro.link.partnerAway"
                " && window.omiro.signaling.ready",
                timeout_ms=20_000,
            )
        heard(alice, "while you were away")
        say(alice, "back")
        heard(bob, "back")
        assert [text for text, _ in alice.js(LINES, "stranger")] == [
            "before",
            "while you were away",
        ]
        for person in (alice, bob):
            person.js("() => clearInterval(window.__videoSampler)")
            stall = person.js(LONGEST_STALL_JS)
            assert stall["longest"] <= STALL_LIMIT_S, (person.name, stall)
            assert person.probe()["created"] == 1
    finally:
        proxy.close()


TICKET_TTL_S = 60  # the smallest session.ticket_ttl_s: the renewals come within a minute


@pytest.mark.rule("protocol/renew-ticket", "protocol/resume")
def test_a_call_longer_than_its_first_ticket_survives_a_restart(make_server, pair):
    env = {"OMIRO_SESSION_SECRET": SECRET, "OMIRO_SESSION_TICKET_TTL_S": str(TICKET_TTL_S)}
    first = make_server(**env)
    alice, bob = pair(first)
    # The page renews at half each ticket's life: twice within the first ticket's life,
    # which is then over (only a renewed ticket can take the match back).
    for person in (alice, bob):
        person.wait(
            "() => window.omiro.link.ticketsRenewed >= 2", timeout_ms=(TICKET_TTL_S + 15) * 1000
        )
    say(alice, "a minute in")
    heard(bob, "a minute in")
    assert first.proc is not None
    first.proc.send_signal(signal.SIGTERM)
    for person in (alice, bob):
        person.wait("() => window.omiro.link.resuming", timeout_ms=5_000)
    assert first.proc.wait(15) == 0
    second = make_server(port=first.port, **env)
    for person in (alice, bob):
        person.wait("() => !window.omiro.link.resuming && window.omiro.signaling.ready", 30_000)
        assert person.state == "connected"
    say(bob, "after the restart")
    heard(alice, "after the restart")
    assert second.port == first.port
