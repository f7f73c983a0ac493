"""Layouts from 320 x 256 up: the chat stays reachable, nothing is cut off.

Screenshots of every size land in ``test-artifacts/`` (not committed) for a
person to look at; the assertions check geometry, not pixels.
"""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.browser

DENY_CAMERA_JS = """
navigator.mediaDevices.getUserMedia = async () => {
  throw new DOMException("Permission denied", "NotAllowedError");
};
"""

# Where an element is, and whether a user can see and reach it: inside the
# viewport, not clipped by a scrolling ancestor, and the topmost element at
# its centre (nothing covers it).
REACHABLE_JS = """
(el) => {
  const r = el.getBoundingClientRect();
  let clipped = false;
  for (let e = el.parentElement; e; e = e.parentElement) {
    const s = getComputedStyle(e);
    if (s.overflowX !== "visible" || s.overflowY !== "visible") {
      const c = e.getBoundingClientRect();
      const out = r.left < c.left - 1 || r.right > c.right + 1
        || r.top < c.top - 1 || r.bottom > c.bottom + 1;
      if (out) clipped = true;
    }
  }
  const inside = r.left >= 0 && r.top >= 0
    && r.right <= innerWidth + 0.5 && r.bottom <= innerHeight + 0.5;
  const top = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
  return {
    inside, clipped, width: r.width, height: r.height,
    onTop: top === el || el.contains(top),
    sideways: document.documentElement.scrollWidth > innerWidth + 1,
  };
}
"""


def reachable(locator: Any) -> dict[str, Any]:
    return locator.evaluate(REACHABLE_JS)


def assert_reachable(locator: Any, what: str) -> None:
    locator.scroll_into_view_if_needed()
    where = reachable(locator)
    assert where["inside"], f"{what} is off screen: {where}"
    assert not where["clipped"], f"{what} is cut off by its panel: {where}"
    assert where["onTop"], f"{what} is covered: {where}"
    assert where["width"] > 20, f"{what} is squashed: {where}"
    assert not where["sideways"], "the page scrolls sideways (no reflow)"


@pytest.mark.parametrize(
    "size", [(390, 480), (640, 400), (320, 256)], ids=["phone-keyboard", "zoom-200", "tiny"]
)
def test_chat_input_visible_and_usable_during_a_call(server, people, size):
    width, height = size
    viewport = {"width": width, "height": height}
    alice = people(server, "alice", viewport=viewport)
    bob = people(server, "bob")
    alice.start()
    bob.start()
    for person in (alice, bob):
        person.wait_state("connected")
    alice.wait_call_connected()

    # Without any scrolling by the user, the composer is on screen, focused.
    where = reachable(alice.testid("chat-input"))
    assert where["inside"], where
    assert not where["clipped"], where
    assert where["onTop"], where
    assert where["height"] >= 36, where
    assert not where["sideways"], "the page scrolls sideways"
    assert alice.js("() => document.activeElement.dataset.testid") == "chat-input"
    assert_reachable(alice.testid("chat-send"), "the send button")
    # The video gives way before the chat does: the message list keeps room
    # for a few lines.
    log = alice.js("() => document.getElementById('chat-log').getBoundingClientRect().height")
    assert log >= 50, log

    alice.page.keyboard.type(f"hello from {width}x{height}")
    alice.page.keyboard.press("Enter")
    bob.wait("() => document.querySelectorAll('.msg-stranger').length === 1")
    assert bob.chat_entries()[-1]["text"] == f"hello from {width}x{height}"
    assert_reachable(alice.page.locator(".msg-you").last, "the message just sent")
    for name in ("next", "stop", "report"):
        assert_reachable(alice.testid(name), name)
        # With words, not icons only.
        label = alice.testid(name).locator("span").first
        assert label.evaluate("el => el.getBoundingClientRect().width") > 20, name
    alice.screenshot(f"layout-{width}x{height}-call.png")


@pytest.mark.parametrize(
    "size",
    [(1280, 800), (820, 1180), (390, 844), (844, 390), (360, 640)],
    ids=["desktop", "tablet-portrait", "phone", "phone-landscape", "small-phone"],
)
def test_nothing_cut_off_at_common_sizes(server, people, size):
    width, height = size
    viewport = {"width": width, "height": height}
    alice = people(server, "alice", viewport=viewport, motion=True)
    # Idle: the welcome text, its chips and the controls are all reachable.
    for selector in (".hero-title", ".hero-points li >> nth=-1", "#start", "#interests"):
        assert_reachable(alice.page.locator(selector), selector)
    alice.screenshot(f"layout-{width}x{height}-idle.png")

    bob = people(server, "bob")
    alice.start()
    bob.start()
    alice.wait_state("connected")
    alice.wait("() => document.body.dataset.media === 'playing'")
    for name in ("next", "stop", "report", "chat-input", "mute", "camera"):
        assert_reachable(alice.testid(name), name)
    # The stranger's video is shown whole: scaled to fit, never cropped.
    fit = alice.js(
        """() => {
          const v = document.getElementById('remote-video');
          const r = v.getBoundingClientRect();
          const scale = Math.min(r.width / v.videoWidth, r.height / v.videoHeight);
          return { fit: getComputedStyle(v).objectFit, shown: scale * v.videoWidth * scale
                   * v.videoHeight, stage: r.width * r.height, w: v.videoWidth };
        }"""
    )
    assert fit["fit"] == "contain", fit
    assert fit["w"] > 0, fit
    alice.screenshot(f"layout-{width}x{height}-call.png")


@pytest.mark.parametrize("size", [(390, 844), (844, 390), (320, 480)])
def test_camera_refusal_choices_reachable_on_phones(server, people, size):
    width, height = size
    alice = people(
        server, "alice", viewport={"width": width, "height": height}, init_script=DENY_CAMERA_JS
    )
    alice.start()
    alice.wait_state("blocked")
    assert_reachable(alice.testid("use-text"), "Chat by text instead")
    assert_reachable(alice.page.get_by_role("button", name="Try again"), "Try again")
    alice.screenshot(f"layout-{width}x{height}-camera-denied.png")
