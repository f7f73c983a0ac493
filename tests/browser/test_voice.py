"""Voice only: the microphone alone, no camera ever asked for, matched only
with other voice-only pages, and the stranger's voice shown as it comes."""

from __future__ import annotations

import pytest
from i18n_support import catalog

pytestmark = pytest.mark.browser

# Every getUserMedia call's constraints, as the page made them.
CONSTRAINTS_JS = """
(() => {
  const seen = [];
  Object.defineProperty(window, "__constraints", { value: seen });
  const devices = navigator.mediaDevices;
  const original = devices.getUserMedia.bind(devices);
  devices.getUserMedia = (constraints) => {
    seen.push(JSON.parse(JSON.stringify(constraints)));
    return original(constraints);
  };
})();
"""

# Bytes received so far, by kind of media.
MEDIA_JS = """async () => {
  const bytes = {};
  (await window.omiro.pc.getStats()).forEach((r) => {
    if (r.type === "inbound-rtp") bytes[r.kind] = (bytes[r.kind] || 0) + r.bytesReceived;
  });
  return { bytes };
}"""

KINDS_JS = """() => {
  const pc = window.omiro.pc;
  return {
    sent: pc.getSenders().filter((s) => s.track).map((s) => s.track.kind),
    received: pc.getTransceivers().map((t) => t.receiver.track.kind),
    local: window.__probe.tracks.map((t) => t.kind),
  };
}"""


def start_voice(person) -> None:
    person.testid("voice-mode").check(force=True)
    person.testid("start").click()


def test_two_voice_only_pages_call_with_audio_and_no_camera(server, people):
    camera = people(server, "camera")
    camera.start()  # a video page already waiting: never offered to voice pages
    camera.wait_state("waiting")
    alice = people(server, "alice", init_script=CONSTRAINTS_JS)
    bob = people(server, "bob", init_script=CONSTRAINTS_JS)
    for person in (alice, bob):
        start_voice(person)
    for person in (alice, bob):
        person.wait_state("connected")
    assert alice.partner_id == bob.session_id
    assert camera.state == "waiting"
    for person in (alice, bob):
        person.wait_call_connected()

    for person in (alice, bob):
        # The microphone, and never a camera: asked once, for audio alone.
        assert person.js("() => window.__constraints") == [
            {
                "video": False,
                "audio": {
                    "echoCancellation": True,
                    "noiseSuppression": True,
                    "autoGainControl": True,
                },
            }
        ]
        # Audio both ways, no video transceiver at all.
        assert person.js(KINDS_JS) == {"sent": ["audio"], "received": ["audio"], "local": ["audio"]}
        # Audio arrives and keeps arriving.
        person.wait(f"async () => ((await ({MEDIA_JS})()).bytes.audio ?? 0) > 0")
        before = person.js(MEDIA_JS)
        person.wait(f"async (b) => (await ({MEDIA_JS})()).bytes.audio > b.bytes.audio", before)
        assert "video" not in person.js(MEDIA_JS)["bytes"]
        # What is on screen: the voice, no picture, no self-view, no camera button.
        assert person.testid("voice-stage").is_visible()
        for hidden in ("remote-video", "local-video", "camera", "switch-camera"):
            assert person.testid(hidden).is_hidden(), hidden
        # The microphone's own controls stay: mute, and the choice of microphone.
        assert person.testid("mute").is_visible()
        assert person.testid("devices").is_visible()
        assert person.js("() => window.omiro.blankVideo.running") is False

    # The stranger's voice (Chromium's fake microphone beeps) lights the
    # meter: a word and the ring's shape change with it, not only a colour.
    english = catalog("en")
    alice.wait("() => window.omiro.voice.everSpoke", timeout_ms=15_000)
    alice.wait(
        "s => document.querySelector('[data-testid=voice-stage]').dataset.speaking === 'true'"
        " && document.querySelector('[data-testid=voice-state]').textContent === s",
        english["voice.speaking"],
        timeout_ms=15_000,
    )
    solid = alice.js("() => getComputedStyle(document.querySelector('.voice-orb')).borderTopStyle")
    assert solid == "solid"
    # The stranger mutes: their silence shows.
    bob.testid("mute").click()
    alice.wait(
        "s => document.querySelector('[data-testid=voice-state]').textContent === s",
        english["voice.silent"],
        timeout_ms=15_000,
    )
    assert (
        alice.js("() => getComputedStyle(document.querySelector('.voice-orb')).borderTopStyle")
        == "dashed"
    )
    # Reduced motion (these pages ask for it): the ring does not pulse.
    assert alice.js("() => getComputedStyle(document.querySelector('.voice-orb')).transform") in (
        "none",
        "matrix(1, 0, 0, 1, 0, 0)",
    )

    # Stop: the meter stops with the call, and the camera was never opened.
    alice.testid("stop").click()
    bob.wait_state("waiting")  # nobody else speaks only: the camera page is not offered
    assert alice.js("() => window.omiro.voice") == {
        "level": 0,
        "speaking": False,
        "everSpoke": False,
    }
    assert all(c["video"] is False for c in alice.js("() => window.__constraints"))


def test_voice_and_text_are_one_choice_at_a_time(server, people):
    alice = people(server, "alice")
    voice, text = alice.testid("voice-mode"), alice.testid("text-mode")
    voice.check(force=True)
    assert alice.js("() => document.body.dataset.mode") == "voice"
    text.check(force=True)
    assert (voice.is_checked(), text.is_checked()) == (False, True)
    assert alice.js("() => document.body.dataset.mode") == "text"
    voice.check(force=True)
    assert (voice.is_checked(), text.is_checked()) == (True, False)
    assert alice.testid("voice-mode").get_attribute("aria-describedby") == "voice-mode-hint"
