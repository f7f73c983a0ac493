"""A rolling upgrade drops no call: two servers on a real Redis behind a balancer.

Alice and Bob are matched across the two servers (the balancer sends each
new connection to the next server whose ``/readyz`` says ready). The
server holding Alice is drained with SIGTERM (default settings): Alice is
told to reconnect, lands on the other server, and takes her match back
with her ticket; Bob, told only that she is away, waits for her. The call's
media never notices; the chat loses and repeats nothing.
"""

from __future__ import annotations

import signal

import pytest
from call_support import LINES, LONGEST_STALL_JS, SAMPLER_JS, STALL_LIMIT_S, heard, say
from proxy_support import ReadyBalancer
from redis_support import new_prefix, redis_missing, running_redis

pytestmark = pytest.mark.browser

SECRET = "rolling-upgrade-" + "r" * 32


@pytest.fixture
def redis():
    import shutil

    if shutil.which("redis-server") is None:
        redis_missing("redis-server is not installed")
    with running_redis() as server:
        yield server


@pytest.mark.rule("protocol/msg-partner-away", "protocol/resume")
def test_draining_one_of_two_servers_keeps_a_call_across_them(make_server, people, redis):
    env = {
        "OMIRO_BACKEND_KIND": "redis",
        "OMIRO_REDIS_URL": redis.url,
        "OMIRO_REDIS_KEY_PREFIX": new_prefix(),
        "OMIRO_SESSION_SECRET": SECRET,
        "OMIRO_SERVER_DRAIN_GRACE_S": "10",  # the default
    }
    servers = [make_server(**env), make_server(**env)]
    balancer = ReadyBalancer([server.port for server in servers])
    try:
        alice = people(servers[0], "alice", url=balancer.url + "/")
        bob = people(servers[0], "bob", url=balancer.url + "/")
        alice.start()
        alice.wait_state("waiting")
        bob.start()
        for person in (alice, bob):
            person.wait_call_connected(timeout_ms=20_000)
        for person in (alice, bob):
            person.wait_media_flowing()
            person.js(SAMPLER_JS)
        # Alice's socket is on the first server, Bob's on the second: a call across.
        assert balancer.sockets_to == [servers[0].port, servers[1].port]
        say(alice, "before")
        heard(bob, "before")
        drained = servers[0]
        assert drained.proc is not None
        drained.proc.send_signal(signal.SIGTERM)
        alice_or_bob_resuming = "() => window.omiro.link.resuming || window.omiro.link.partnerAway"
        for person in (alice, bob):
            person.wait(alice_or_bob_resuming, timeout_ms=5_000)
        assert drained.proc.wait(15) == 0
        assert balancer.sockets_to[2:] == [servers[1].port]  # Alice came back to the other
        for person in (alice, bob):
            person.wait(
                "() => !window.omiro.link.resuming && !window.omiro.link.partnerAway"
                " && window.omiro.signaling.ready",
                timeout_ms=30_000,
            )
            assert person.state == "connected"
        say(bob, "after")
        heard(alice, "after")
        say(alice, "still here")
        heard(bob, "still here")
        assert [text for text, _ in bob.js(LINES, "stranger")] == ["before", "still here"]
        assert [text for text, _ in alice.js(LINES, "stranger")] == ["after"]
        for person in (alice, bob):
            person.js("() => clearInterval(window.__videoSampler)")
            stall = person.js(LONGEST_STALL_JS)
            assert stall["longest"] <= STALL_LIMIT_S, (person.name, stall)
            assert person.probe()["created"] == 1
    finally:
        balancer.close()
