"""A partner whose network goes silent is noticed in seconds (issue 23).

Alice reaches both the server and her TURN relay through proxies the test
controls; at the fault they stop forwarding without closing anything (a
phone that walks out of Wi-Fi). Media is relay-only through a real coturn
over TCP, so Alice's media goes through her proxy too. Bob is on a good
network. Everything runs with the default liveness bound (15 s): the test
waits with deadlines, it shortens no timer.
"""

from __future__ import annotations

import time

import pytest
from proxy_support import SilentProxy

pytestmark = pytest.mark.browser

LOST_S = 15.0  # server.lost_after_s, the default
UNSTABLE_BY_S = 5.0  # "the connection is unstable" within about 5 s
SLACK_S = 0.5  # the test's own polling and a busy machine

# Alice's browser reaches coturn through her proxy: the same TURN server, another port.
VIA_PROXY_JS = """
(() => {
  const [from, to] = [%d, %d];
  const Native = window.RTCPeerConnection;
  window.RTCPeerConnection = class extends Native {
    constructor(config, ...rest) {
      const servers = (config?.iceServers ?? []).map((server) => ({
        ...server,
        urls: [].concat(server.urls).map((url) => url.replace(`:${from}?`, `:${to}?`)),
      }));
      super({ ...config, iceServers: servers }, ...rest);
    }
  };
})();
"""

CHAT_TEXTS = (
    "() => [...document.querySelectorAll('[data-testid=chat-log] > li')].map(li => li.textContent)"
)


def wait_until(person, predicate: str, deadline: float) -> float:
    """Poll the page (bounded) until ``predicate``; the monotonic time it held."""
    person.wait(predicate, timeout_ms=max(1, int((deadline - time.monotonic()) * 1000)))
    return time.monotonic()


@pytest.mark.rule("protocol/liveness-op", "protocol/op-peer-lost")
def test_a_partner_gone_silent_is_unstable_within_5_s_and_lost_within_15_s(
    make_server, people, coturn
):
    turn_url = f"turn:127.0.0.1:{coturn.port}?transport=tcp"
    server = make_server(
        OMIRO_ICE_TURN_URLS=f'["{turn_url}"]',
        OMIRO_ICE_TURN_SECRET=coturn.secret,
        OMIRO_ICE_RELAY_ONLY="true",
    )
    to_server = SilentProxy(server.port)
    to_turn = SilentProxy(coturn.port)
    try:
        alice = people(
            server,
            "alice",
            url=to_server.url + "/",
            init_script=VIA_PROXY_JS % (coturn.port, to_turn.port),
        )
        bob = people(server, "bob")
        alice.start()
        alice.wait_state("waiting")
        assert alice.js("() => window.omiro.signaling.liveness") == {
            "alive_ms": 2500,
            "unstable_ms": 3750,
            "lost_ms": 15000,
        }
        bob.start()
        for person in (alice, bob):
            person.wait_call_connected(timeout_ms=20_000)
        for person in (alice, bob):
            person.wait_media_flowing()
        assert bob.js("() => window.omiro.link") == {
            "unstable": [],
            "media": "steady",
            "resuming": False,
            "partnerAway": False,
            "ticketsRenewed": 0,
        }

        to_server.freeze()
        to_turn.freeze()
        silent_at = time.monotonic()

        # Bob: unstable within about 5 s (his media stopped), the call kept.
        unstable_at = wait_until(
            bob, "() => window.omiro.link.unstable.includes('media')", silent_at + 10
        )
        assert unstable_at - silent_at <= UNSTABLE_BY_S + SLACK_S
        assert bob.state == "connected"
        status = bob.testid("status").text_content()
        assert status == "Connection unstable… trying to restore it"
        assert bob.js("() => window.omiro.call.iceRestarts") >= 1  # it tried to restore it

        # Alice's page says the same of her side.
        alice.wait("() => window.omiro.link.unstable.length > 0", timeout_ms=3_000)

        # Bob: told within the bound that the stranger is gone, and looking again.
        lost_text = "The connection to the stranger was lost, so this chat has ended."
        lost_at = wait_until(
            bob, f"() => ({CHAT_TEXTS})().includes({lost_text!r})", silent_at + LOST_S + 10
        )
        assert lost_at - silent_at <= LOST_S + SLACK_S, lost_at - silent_at
        bob.wait_state("waiting", timeout_ms=2_000)
        # Said once, whichever noticed first (the server, or Bob's own media watch).
        assert [line for line in bob.js(CHAT_TEXTS) if "lost" in line] == [lost_text]
        assert bob.js("() => window.omiro.pc") is None
        assert bob.probe()["live"] == 0  # nothing of the call is left behind

        # Alice, silent, ended the call on her side too, saying why.
        own_text = "Your connection dropped, so this chat has ended."
        wait_until(alice, f"() => ({CHAT_TEXTS})().includes({own_text!r})", silent_at + LOST_S + 5)
        assert alice.probe()["live"] == 0

        # Her network comes back: she is looking again (or already back with Bob,
        # the only other person here), with the reason still on her screen.
        to_server.thaw()
        to_turn.thaw()
        alice.wait(
            "() => ['waiting', 'connected'].includes(window.omiro.state)"
            " && window.omiro.signaling.ready",
            timeout_ms=30_000,
        )
        assert own_text in alice.js(CHAT_TEXTS)
    finally:
        to_server.close()
        to_turn.close()
