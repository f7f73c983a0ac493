"""Camera controls during a call: switch front/back, choose a camera or a
microphone, full screen; the call goes on without a new negotiation
(RTCRtpSender.replaceTrack), and the stranger is told a new camera's kind.

The cameras are painted canvases (``camera_support.THREE_CAMERAS_JS``): a red
front camera, a green back camera and a blue "OBS Virtual Camera"; the
stranger's page reads the colour of the middle of the picture it receives.
"""

from __future__ import annotations

from typing import Any

import pytest
from camera_support import CAMERAS, SENT_OPS_JS, THREE_CAMERAS_JS

pytestmark = pytest.mark.browser

NEGOTIATION = ("webrtc_offer", "webrtc_answer")

# The colour at the middle of the stranger's picture, as this page receives it.
MIDDLE_RGB_JS = """
() => {
  const video = document.getElementById("remote-video");
  if (!video.videoWidth) return null;
  const canvas = Object.assign(document.createElement("canvas"), { width: 8, height: 8 });
  const c = canvas.getContext("2d");
  c.drawImage(video, video.videoWidth / 2 - 4, video.videoHeight / 2 - 4, 8, 8, 0, 0, 8, 8);
  return [...c.getImageData(4, 4, 1, 1).data.slice(0, 3)];
}
"""


def negotiations(person: Any) -> int:
    return person.js("ops => window.__sentOps.filter(op => ops.includes(op)).length", NEGOTIATION)


def wait_for_colour(person: Any, camera: str) -> None:
    """The stranger's picture shows ``camera``'s colour (each channel within 40)."""
    person.wait(
        f"([rgb]) => {{ const got = ({MIDDLE_RGB_JS})();"
        " return got && got.every((v, i) => Math.abs(v - rgb[i]) < 40); }",
        [list(CAMERAS[camera])],
    )


def test_switch_and_choose_devices_without_a_new_negotiation(server, people):
    script = THREE_CAMERAS_JS + SENT_OPS_JS
    alice = people(server, "alice", init_script=script)
    bob = people(server, "bob", init_script=script)
    alice.start()
    bob.start()
    for person in (alice, bob):
        person.wait_call_connected()
    bob.wait_media_flowing()
    wait_for_colour(bob, "front")
    alice.js(
        "() => { window.__pc = window.omiro.pc; window.__oldVideo = window.omiro.pc.getSenders()"
        ".find(s => s.track && s.track.kind === 'video').track; }"
    )
    before = {p.name: negotiations(p) for p in (alice, bob)}
    assert alice.js("() => window.omiro.ownCamera.kind") == "camera"

    # Switch: the front camera gives way to the back one.
    switch = alice.testid("switch-camera")
    assert switch.is_visible()  # two cameras or more
    switch.click()
    wait_for_colour(bob, "back")  # what the stranger receives is the new camera
    assert alice.js("() => window.omiro.devices.video") == "back"
    # The count goes up when replaceTrack's promise settles on Alice's page, a
    # task that may run after Bob's picture has already changed.
    alice.wait("() => window.omiro.call.tracksReplaced >= 1")
    assert alice.js("() => window.omiro.call.tracksReplaced") == 1
    # The same RTCPeerConnection, still connected, and no offer or answer sent.
    assert alice.js("() => window.omiro.pc === window.__pc")
    assert alice.js("() => window.omiro.pc.connectionState") == "connected"
    assert alice.js("() => window.omiro.pc.signalingState") == "stable"
    assert {p.name: negotiations(p) for p in (alice, bob)} == before
    assert alice.js("() => window.omiro.call.offersSent") == (
        0 if alice.js("() => window.omiro.call.polite") else 1
    )
    # The preview shows the new camera, and the old one is off.
    assert alice.js("() => window.__oldVideo.readyState") == "ended"
    assert (
        alice.js("() => document.getElementById('local-video').srcObject.getVideoTracks()[0].label")
        == "Back camera"
    )

    # Choose the virtual camera: the stranger is told its kind again.
    alice.testid("devices").click()
    dialog = alice.testid("devices-dialog")
    dialog.wait_for(state="visible")
    alice.testid("camera-select").select_option("obs")
    wait_for_colour(bob, "obs")
    alice.wait("() => !document.getElementById('local-camera-kind').hidden")
    bob.wait("() => !document.getElementById('remote-camera-kind').hidden")
    assert alice.js("() => window.omiro.ownCamera.kind") == "virtual"
    # And the microphone: another of the browser's devices.
    old_mic = alice.js("() => window.omiro.devices.audio")
    mics = alice.js("() => [...document.getElementById('mic-select').options].map(o => o.value)")
    assert len(mics) >= 2, mics
    alice.testid("mic-select").select_option(next(m for m in mics if m != old_mic))
    alice.wait("old => window.omiro.devices.audio !== old", old_mic)
    alice.wait(
        "() => window.omiro.pc.getSenders().some(s => s.track && s.track.kind === 'audio'"
        " && s.track.getSettings().deviceId === window.omiro.devices.audio)"
    )
    alice.testid("devices-done").click()
    dialog.wait_for(state="hidden")

    # Back to a real camera: the badge goes on both sides.
    alice.testid("devices").click()
    alice.testid("camera-select").select_option("front")
    alice.testid("devices-done").click()
    wait_for_colour(bob, "front")
    bob.wait("() => document.getElementById('remote-camera-kind').hidden")
    assert alice.testid("local-camera-kind").is_hidden()
    assert (
        sorted(alice.js("() => window.__sentOps.filter(op => op === 'camera_kind')"))
        == ["camera_kind"] * 3
    )  # at the match, to the virtual one, back
    assert {p.name: negotiations(p) for p in (alice, bob)} == before
    assert alice.js("() => window.omiro.pc === window.__pc")
    bob.wait_media_flowing()


def test_full_screen_keeps_the_call_and_esc_does_not_skip(server, pair):
    alice, _ = pair(server)
    match = alice.js("() => window.omiro.matchId")
    full = alice.testid("fullscreen")
    assert full.is_visible()
    assert full.get_attribute("aria-pressed") == "false"
    full.click()
    alice.wait("() => document.fullscreenElement && document.fullscreenElement.id === 'stage'")
    alice.wait(
        "() => document.getElementById('fullscreen').getAttribute('aria-pressed') === 'true'"
    )
    assert alice.js("() => window.omiro.pc.connectionState") == "connected"
    # Esc belongs to full screen here: it never skips the stranger.
    alice.page.keyboard.press("Escape")  # handled before press() returns
    assert alice.js("() => window.omiro.matchId") == match
    if alice.js("() => document.fullscreenElement !== null"):
        full.click()
    alice.wait("() => document.fullscreenElement === null")
    alice.wait(
        "() => document.getElementById('fullscreen').getAttribute('aria-pressed') === 'false'"
    )
    assert alice.js("() => window.omiro.matchId") == match
    assert alice.state == "connected"
