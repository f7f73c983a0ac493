"""Two strangers really see and hear each other, and the page looks the part."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.browser

TESTIDS = [
    "start",
    "next",
    "stop",
    "text-mode",
    "interests",
    "status",
    "local-video",
    "remote-video",
    "chat-log",
    "chat-input",
    "chat-send",
    "typing-indicator",
    "online-count",
]
TRACKS = (
    "() => window.omiro.call && Object.fromEntries(window.omiro.call.pc.getSenders()"
    ".filter(s => s.track).map(s => [s.track.kind, s.track.enabled]))"
)


def test_call_two_pages_connect_with_audio_and_video(server, people):
    # motion=True: these pages are photographed, so they keep their animations.
    alice = people(server, "alice", viewport={"width": 1280, "height": 800}, motion=True)
    bob = people(
        server,
        "bob",
        viewport={"width": 390, "height": 844},
        is_mobile=True,
        has_touch=True,
        device_scale_factor=2,
        motion=True,
    )

    for person in (alice, bob):
        for name in TESTIDS:
            assert person.testid(name).count() == 1, name

    # The online count comes from /stats, and counts the reader: nobody else
    # is connected yet.
    alice.wait(
        "() => document.querySelector('[data-testid=online-count]').textContent === 'Just you here'"
    )

    alice.start()
    alice.wait_state("waiting")
    assert "Looking for someone" in alice.testid("status").inner_text()
    bob.start()
    for person in (alice, bob):
        person.wait_state("connected")
        assert person.testid("status").inner_text().startswith("You're talking with a stranger")

    # Exactly one side offers: the one the server told to call is impolite.
    roles = {p.name: p.js("() => window.omiro.call.polite") for p in (alice, bob)}
    assert sorted(roles.values()) == [False, True]

    for person in (alice, bob):
        person.wait_call_connected()
    for person in (alice, bob):
        person.wait_media_flowing()
        media = person.media()
        assert media["width"] > 0
        assert media["height"] > 0

    # The local preview is mirrored and the remote video plays inline on phones.
    for person in (alice, bob):
        transform = person.js(
            "() => getComputedStyle(document.querySelector('[data-testid=local-video]')).transform"
        )
        assert transform.startswith("matrix(-1"), transform
        assert person.testid("remote-video").get_attribute("playsinline") is not None
        assert person.js("() => document.querySelector('[data-testid=local-video]').muted")

    # The quality badge reports a round-trip time over a direct (loopback) path.
    for person in (alice, bob):
        person.wait(
            "() => { const q = document.querySelector('[data-testid=quality]');"
            " return !q.hidden && / ms · direct$/.test(q.textContent); }"
        )
        assert person.js("() => window.omiro.quality.path") == "direct"

    for person in (alice, bob):
        person.wait(
            "() => document.querySelector('[data-testid=online-count]').textContent"
            " === '2 people here'"
        )

    # Both ends of the trickle finished: end-of-candidates (null) went both ways.
    for person in (alice, bob):
        person.wait(
            "() => window.omiro.call.endOfCandidatesSent"
            " && window.omiro.call.endOfCandidatesReceived"
        )

    # Mute and camera off, by button and by key; the sent tracks follow.
    assert alice.js(TRACKS) == {"audio": True, "video": True}
    alice.testid("mute").click()
    alice.page.keyboard.press("v")
    assert alice.js(TRACKS) == {"audio": False, "video": False}
    assert alice.testid("mute").get_attribute("aria-pressed") == "true"
    assert alice.testid("camera").get_attribute("aria-pressed") == "true"
    alice.page.keyboard.press("m")
    alice.testid("camera").click()
    assert alice.js(TRACKS) == {"audio": True, "video": True}

    # The phone layout fits: nothing wider than the screen, the controls on it.
    assert bob.js("() => document.documentElement.scrollWidth <= innerWidth")
    for name in ("next", "stop", "chat-input", "chat-send", "remote-video", "local-video"):
        box = bob.testid(name).bounding_box()
        assert box, name
        assert 0 <= box["x"] <= 390 - box["width"], (name, box)
        assert 0 <= box["y"] <= 844 - box["height"], (name, box)

    # A little conversation, then the screenshots people will judge us by.
    alice.testid("chat-input").fill("Hi! Where are you calling from?")
    alice.testid("chat-input").press("Enter")
    bob.wait(
        "() => document.querySelector('[data-testid=chat-log]').textContent"
        ".includes('Where are you calling from')"
    )
    bob.testid("chat-input").fill("Lisbon, and you?")
    bob.testid("chat-send").click()
    alice.wait(
        "() => document.querySelector('[data-testid=chat-log]').textContent.includes('Lisbon')"
    )
    bob.testid("chat-input").fill("This is fun")
    alice.wait("() => !document.querySelector('[data-testid=typing-indicator]').hidden")
    alice.wait_media_flowing()
    bob.wait_media_flowing()
    alice.page.mouse.move(1, 1)  # no hover effect in the picture
    desktop = alice.screenshot("call-desktop.png")
    phone = bob.screenshot("call-phone.png")
    assert desktop.stat().st_size > 20_000
    assert phone.stat().st_size > 20_000


UFRAG = "(which) => (window.omiro.pc[which]?.sdp.match(/a=ice-ufrag:(\\S+)/) || [])[1]"
HOLD_OFFERS = """() => {
  const signaling = window.omiro.signaling;
  window.__held = [];
  signaling.send = (op, data) => {
    if (op === "webrtc_offer" && window.__held) { window.__held.push(data); return true; }
    return Object.getPrototypeOf(signaling).send.call(signaling, op, data);
  };
}"""
RELEASE_OFFERS = """() => {
  const held = window.__held;
  window.__held = null;
  for (const data of held) window.omiro.signaling.send("webrtc_offer", data);
  return held.length;
}"""


def test_call_survives_ice_restarts_from_either_side_and_offer_glare(server, pair):
    alice, bob = pair(server)
    caller = alice if alice.js("() => !window.omiro.call.polite") else bob
    callee = bob if caller is alice else alice

    def renegotiated(before):
        for person in (alice, bob):
            person.wait(
                f"(old) => ({UFRAG})('remoteDescription') !== old"
                " && window.omiro.pc.signalingState === 'stable'"
                " && window.omiro.pc.connectionState === 'connected'",
                before[person.name],
            )

    def ufrags():
        return {p.name: p.js(UFRAG, "remoteDescription") for p in (alice, bob)}

    # Either side can restart ICE on its own (the polite one too).
    for person in (caller, callee):
        before = ufrags()
        person.js("() => window.omiro.call.restartIce()")
        renegotiated(before)

    # Glare, made certain: the caller's offer is held back until the callee's
    # offer has reached the caller. The impolite caller ignores the callee's
    # offer; the polite callee rolls back and answers the caller's.
    before = ufrags()
    caller.js(HOLD_OFFERS)
    caller.js("() => window.omiro.call.restartIce()")
    caller.wait("() => window.__held.length === 1")
    callee.js("() => window.omiro.call.restartIce()")
    caller.wait("() => window.omiro.call.ignoredOffers === 1")
    assert caller.js(RELEASE_OFFERS) == 1
    renegotiated(before)
    assert callee.js("() => [window.omiro.call.collisions, window.omiro.call.ignoredOffers]") == [
        1,
        0,
    ]
    assert caller.js("() => [window.omiro.call.collisions, window.omiro.call.ignoredOffers]") == [
        1,
        1,
    ]

    for person in (alice, bob):
        assert person.probe()["created"] == 1  # all on the same peer connection
    alice.wait_media_flowing()
    bob.wait_media_flowing()


FAKE_CONNECTION_STATE = """state => {
  // Report a connection state to the app as the browser would; null restores the real one.
  const pc = window.omiro.pc;
  if (state === null) delete pc.connectionState;
  else Object.defineProperty(pc, "connectionState", { get: () => state, configurable: true });
  pc.dispatchEvent(new Event("connectionstatechange"));
}"""


def test_call_restarts_ice_by_itself_when_failed_or_disconnected_too_long(server, pair):
    alice, bob = pair(server)

    def restarts() -> int:
        return alice.js("() => window.omiro.call.iceRestarts")

    # "failed": an ICE restart at once, renegotiated on the same connection.
    before, old = restarts(), alice.js(UFRAG, "localDescription")
    alice.js(FAKE_CONNECTION_STATE, "failed")
    alice.wait("n => window.omiro.call.iceRestarts === n + 1", before)
    alice.js(FAKE_CONNECTION_STATE, None)
    bob.wait(f"(old) => ({UFRAG})('remoteDescription') !== old", old)

    # "disconnected": a restart only once it has lasted RESTART_AFTER_DISCONNECTED_MS.
    before, old = restarts(), alice.js(UFRAG, "localDescription")
    alice.js(FAKE_CONNECTION_STATE, "disconnected")
    started = alice.js("() => performance.now()")
    alice.wait("n => window.omiro.call.iceRestarts === n + 1", before, timeout_ms=10_000)
    assert alice.js("() => performance.now()") - started >= 2_900
    alice.js(FAKE_CONNECTION_STATE, None)
    bob.wait(f"(old) => ({UFRAG})('remoteDescription') !== old", old)

    for person in (alice, bob):
        person.wait_call_connected()
        assert person.probe()["created"] == 1  # restarts, never a new connection
    alice.wait_media_flowing()
    bob.wait_media_flowing()


def test_call_buffers_candidates_that_arrive_before_the_offer(server, people):
    alice = people(server, "alice")
    bob = people(server, "bob")
    alice.js(HOLD_OFFERS)  # alice waits longest, so she will be the caller
    alice.start()
    alice.wait_state("waiting")
    bob.start()
    for person in (alice, bob):
        person.wait_state("connected")
    assert alice.js("() => window.omiro.call.polite") is False
    # Alice's candidates (all of them, up to the null) go out; her offer is held.
    alice.wait("() => window.omiro.call.endOfCandidatesSent && window.__held.length === 1")
    bob.wait("() => window.omiro.call.endOfCandidatesReceived")
    assert bob.js("() => window.omiro.pc.remoteDescription") is None
    buffered = bob.js("() => window.omiro.call.candidatesBuffered")
    assert buffered >= 2, buffered  # at least one real candidate and the null
    assert alice.js(RELEASE_OFFERS) == 1
    for person in (alice, bob):
        person.wait_call_connected()
    bob.wait_media_flowing()


def test_page_loads_without_flashing_an_empty_preview(server, people):
    # With animations on, the preview box would still be fading out here if
    # the page started with it shown and hid it only once its script ran.
    alice = people(server, "alice", motion=True)
    opacity = alice.js("() => getComputedStyle(document.querySelector('.pip')).opacity")
    assert opacity == "0"
    assert alice.js("() => document.body.dataset.preview") == "off"
