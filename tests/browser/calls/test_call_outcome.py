"""The page reports each call's outcome once: a direct call, and an ICE failure."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.browser

OUTCOME = "() => window.omiro.call && window.omiro.call.outcome"

# Withholds every ICE candidate from the peer connection (trickled ones and
# any in the SDP), so no candidate pair can ever be checked: a real ICE
# failure on an otherwise healthy page.
NO_REMOTE_CANDIDATES = """(() => {
  const proto = window.RTCPeerConnection.prototype;
  const addIceCandidate = proto.addIceCandidate;
  proto.addIceCandidate = function (candidate) {
    return candidate ? Promise.resolve() : addIceCandidate.call(this);
  };
  const setRemoteDescription = proto.setRemoteDescription;
  proto.setRemoteDescription = function (description) {
    if (description && description.sdp) {
      const sdp = description.sdp
        .split("\\r\\n")
        .filter((line) => !line.startsWith("a=candidate"))
        .join("\\r\\n");
      description = { type: description.type, sdp };
    }
    return setRemoteDescription.call(this, description);
  };
})();"""


def fast_forward_live(person, ms: int) -> None:
    """Move the page's fake clock on by ``ms`` a second at a time, letting the server's
    answers to the page's liveness beats arrive in between (a healthy network: in one
    jump the page would find the server silent for the whole of it)."""
    for _ in range(ms // 1000):
        person.page.clock.fast_forward(1000)
        person.wait("() => window.omiro.signaling.silentMs < 3000")
    person.page.clock.fast_forward(ms % 1000)


def test_call_outcome_direct_call_counted_once_per_side(server, pair, metrics):
    alice, bob = pair(server)
    match_id = alice.js("() => window.omiro.matchId")
    for person in (alice, bob):
        person.wait(f"() => ({OUTCOME})() !== null")
        outcome = person.js(OUTCOME)
        assert outcome["outcome"] == "connected"
        assert outcome["path"] == "direct"
        assert 0 < outcome["connectMs"] < 15_000
    m = metrics(server.url)
    m.wait(m.CONNECTED_DIRECT, 2)
    assert m.get('omiro_call_connect_seconds_count{path="direct"}') == 2
    assert m.get(m.CONNECTED_RELAY) == 0
    assert m.get(m.FAILED) == 0
    # Next: a new match, a new call, one more outcome from each side.
    bob.testid("next").click()
    for person in (alice, bob):
        person.wait("id => window.omiro.matchId && window.omiro.matchId !== id", match_id)
        person.wait(f"() => ({OUTCOME})() !== null")
    m.wait(m.CONNECTED_DIRECT, 4)
    assert m.get(m.FAILED) == 0


def test_call_outcome_ice_failure_is_reported_as_failed(server, people, metrics):
    alice = people(server, "alice", init_script=NO_REMOTE_CANDIDATES)
    bob = people(server, "bob", init_script=NO_REMOTE_CANDIDATES)
    for person in (alice, bob):
        person.page.clock.install()
    alice.start()
    alice.wait_state("waiting")
    bob.start()
    for person in (alice, bob):
        person.wait_state("connected")
        # Both sides have their own candidates, but none of the other's.
        person.wait("() => window.omiro.call.endOfCandidatesReceived")
        assert person.js("() => window.omiro.call.localCandidates") > 0
        assert person.js("() => window.omiro.pc.connectionState") != "connected"
    for person in (alice, bob):
        fast_forward_live(person, 31_000)  # past the page's connect deadline
        person.wait(f"() => ({OUTCOME})() !== null")
        assert person.js(OUTCOME) == {
            "outcome": "failed",
            "connectMs": None,
            "path": None,
            "reason": "timeout",
        }
        caption = person.page.locator("#overlay-caption")
        assert caption.is_visible()
        assert "The video couldn't connect" in caption.inner_text()
    m = metrics(server.url)
    m.wait(m.FAILED, 2)
    assert m.get(m.CONNECTED_DIRECT) == 0


FAKE_FAILED = """() => {
  // The browser's own verdict, as it reports it after every candidate pair failed.
  const pc = window.omiro.pc;
  Object.defineProperty(pc, "connectionState", { get: () => "failed", configurable: true });
  pc.dispatchEvent(new Event("connectionstatechange"));
}"""


def test_call_outcome_failed_state_before_connecting_is_reported(server, people, metrics):
    alice = people(server, "alice", init_script=NO_REMOTE_CANDIDATES)
    bob = people(server, "bob", init_script=NO_REMOTE_CANDIDATES)
    alice.start()
    alice.wait_state("waiting")
    bob.start()
    for person in (alice, bob):
        person.wait_state("connected")
        person.wait("() => window.omiro.call.endOfCandidatesReceived")
    alice.js(FAKE_FAILED)
    alice.wait(f"() => ({OUTCOME})() !== null")
    assert alice.js(OUTCOME) == {
        "outcome": "failed",
        "connectMs": None,
        "path": None,
        "reason": "ice-failed",
    }
    assert alice.js("() => window.omiro.call.iceRestarts") == 1  # it still tries to recover
    assert alice.js("() => document.body.dataset.call") == "failed"
    assert "The video couldn't connect" in alice.page.locator("#overlay-caption").inner_text()
    # Bob's call has not settled: only alice's side is counted.
    assert bob.js(OUTCOME) is None
    m = metrics(server.url)
    m.wait(m.FAILED, 1)
    assert m.get(m.CONNECTED_DIRECT) == 0


def test_call_outcome_given_up_after_waiting_is_failed_skipped_at_once_is_not(
    server, people, metrics
):
    alice = people(server, "alice", init_script=NO_REMOTE_CANDIDATES)
    bob = people(server, "bob", init_script=NO_REMOTE_CANDIDATES)
    alice.page.clock.install()
    alice.start()
    alice.wait_state("waiting")
    bob.start()
    for person in (alice, bob):
        person.wait_state("connected")
    match_id = alice.js("() => window.omiro.matchId")
    # Alice stares at "Connecting video…" for 11 s, then presses Next; for
    # Bob, whose call ends with it, hardly any time has passed.
    fast_forward_live(alice, 11_000)
    assert alice.js(OUTCOME) is None  # the 30 s deadline has not passed
    alice.testid("next").click()
    m = metrics(server.url)
    m.wait(m.FAILED, 1)
    # Both rejoin and meet again (nobody else is there): by then the server
    # has read everything Bob sent when his call ended, and counted nothing.
    for person in (alice, bob):
        person.wait("id => window.omiro.matchId && window.omiro.matchId !== id", match_id)
    assert m.get(m.FAILED) == 1
    assert m.get(m.CONNECTED_DIRECT) == 0
