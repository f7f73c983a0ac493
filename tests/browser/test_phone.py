"""A phone in a video chat: the stranger fills the screen, upright and sideways.

At 390x844 (touch, device pixel ratio 3) the stranger's video takes at least
60 % of the screen, a tall stream fills its box, one's own picture keeps
clear of the middle of the stranger's (where a face is), and the chat lies
over the video keeping its last lines and the message box in sight. Held
sideways, the video and the chat sit side by side.

With ``OMIRO_DOCS_SCREENSHOTS=1`` the two screenshots of
``docs/frontend.md`` are written to ``docs/images/`` (otherwise to
``test-artifacts/``), from the same pages the assertions look at.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from camera_support import PORTRAIT_CAMERA_JS

pytestmark = pytest.mark.browser

DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
UPRIGHT = {"width": 390, "height": 844}
SIDEWAYS = {"width": 844, "height": 390}
PHONE = {"has_touch": True, "is_mobile": True, "device_scale_factor": 3}

GEOMETRY_JS = """
() => {
  const box = (el) => {
    const r = el.getBoundingClientRect();
    return { left: r.left, right: r.right, top: r.top, bottom: r.bottom,
             width: r.width, height: r.height };
  };
  const video = document.getElementById("remote-video");
  const input = document.getElementById("chat-input");
  const last = [...document.querySelectorAll("#chat-log > li")].at(-1);
  const lastBox = last ? box(last) : null;
  const topAt = (b) => b && document.elementFromPoint(b.left + b.width / 2, b.top + b.height / 2);
  return {
    viewport: { width: innerWidth, height: innerHeight },
    scrolls: document.scrollingElement.scrollHeight > innerHeight + 1,
    remote: box(video),
    fit: getComputedStyle(video).objectFit,
    stream: { width: video.videoWidth, height: video.videoHeight },
    pip: box(document.querySelector(".pip")),
    chat: box(document.querySelector(".chat")),
    stage: box(document.querySelector(".stage")),
    input: box(document.getElementById("chat-input")),
    last: lastBox,
    lastOnTop: last ? last.contains(topAt(lastBox)) : false,
    inputOnTop: input === topAt(box(input)),
    backdropRunning: document.getAnimations()
      .filter((a) => a.effect?.target?.matches?.(".backdrop, .blob"))
      .some((a) => a.playState === "running"),
  };
}
"""


def overlaps(a: dict[str, float], b: dict[str, float]) -> bool:
    return (
        a["left"] < b["right"]
        and b["left"] < a["right"]
        and a["top"] < b["bottom"]
        and b["top"] < a["bottom"]
    )


def screenshot(person: Any, name: str) -> None:
    if os.environ.get("OMIRO_DOCS_SCREENSHOTS"):
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        person.page.screenshot(path=str(DOCS_IMAGES / name), animations="disabled", scale="css")
    person.screenshot(name)


def call_on_a_phone(server: Any, people: Any, viewport: dict[str, int]) -> tuple[Any, Any]:
    alice = people(
        server, "alice", viewport=viewport, init_script=PORTRAIT_CAMERA_JS, motion=True, **PHONE
    )
    bob = people(server, "bob", viewport=UPRIGHT, init_script=PORTRAIT_CAMERA_JS, **PHONE)
    alice.start()
    bob.start()
    for person in (alice, bob):
        person.wait_state("connected")
    alice.wait("() => document.body.dataset.media === 'playing'")
    alice.testid("show-video").click()
    for words in ("hi! where are you from?", "São Paulo, and you?"):
        bob.testid("chat-input").fill(words)
        bob.page.keyboard.press("Enter")
    alice.testid("chat-input").fill("Lisbon!")
    alice.page.keyboard.press("Enter")
    alice.wait("() => document.querySelectorAll('.msg-stranger').length === 2")
    alice.wait("() => document.getElementById('remote-video').dataset.fit !== undefined")
    return alice, bob


def test_upright_the_stranger_fills_the_screen(server, people):
    alice, _ = call_on_a_phone(server, people, UPRIGHT)
    g = alice.js(GEOMETRY_JS)
    screen = g["viewport"]["width"] * g["viewport"]["height"]
    remote = g["remote"]
    # The stranger's box: at least 60 % of the screen.
    assert remote["width"] * remote["height"] >= 0.6 * screen, g
    # A tall stream fills it (cut a little at the edges, not shrunk to a strip).
    assert g["stream"]["height"] > g["stream"]["width"], g
    assert g["fit"] == "cover", g
    # One's own picture keeps clear of the middle of the stranger's, where a
    # face is: the middle 40 % of its width and height.
    middle = {
        "left": remote["left"] + 0.3 * remote["width"],
        "right": remote["right"] - 0.3 * remote["width"],
        "top": remote["top"] + 0.3 * remote["height"],
        "bottom": remote["bottom"] - 0.3 * remote["height"],
    }
    assert not overlaps(g["pip"], middle), g
    # The chat lies over the video: its last line and the message box are
    # on screen, on top, over the stage; nothing needs scrolling.
    assert overlaps(g["chat"], g["stage"]), g
    assert g["last"]["bottom"] <= g["viewport"]["height"], g
    assert g["lastOnTop"], g
    assert g["inputOnTop"], g
    assert g["input"]["bottom"] <= g["viewport"]["height"], g
    assert not g["scrolls"], g
    # The moving backdrop is covered: it rests.
    assert not g["backdropRunning"], g
    for name in ("next", "stop", "report", "mute", "camera"):
        box = alice.testid(name).bounding_box()
        assert box is not None, name
        assert box["y"] + box["height"] <= g["viewport"]["height"], name
    screenshot(alice, "phone-upright.png")


def test_sideways_video_and_chat_side_by_side(server, people):
    alice, _ = call_on_a_phone(server, people, SIDEWAYS)
    g = alice.js(GEOMETRY_JS)
    assert g["stage"]["right"] <= g["chat"]["left"], g
    assert not overlaps(g["stage"], g["chat"]), g
    assert g["remote"]["width"] >= 0.55 * g["viewport"]["width"], g
    assert g["remote"]["height"] >= 0.7 * g["viewport"]["height"], g
    # A tall stream on a wide stage is shown whole.
    assert g["fit"] == "contain", g
    assert g["inputOnTop"], g
    assert g["input"]["bottom"] <= g["viewport"]["height"], g
    screenshot(alice, "phone-sideways.png")
