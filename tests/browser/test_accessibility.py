"""Accessibility: axe-core in every state, a keyboard-only chat, screen-reader manners.

axe-core comes bundled inside ``axe-playwright-python`` (``axe.min.js``), so
nothing is fetched: it runs offline, like the rest of the suite. axe is run
with the WCAG 2.x A/AA rule sets plus its best practices; its colour-contrast
rule only judges text over plain backgrounds (over the moving gradient it
answers "needs review"), which is why ``test_contrast.py`` measures contrast
itself.
"""

from __future__ import annotations

from typing import Any

import pytest
from i18n_support import LANGUAGES, catalog, english_leftovers
from support import AXE_OPTIONS

pytestmark = pytest.mark.browser


DENY_CAMERA_JS = """
navigator.mediaDevices.getUserMedia = async () => {
  throw new DOMException("Permission denied", "NotAllowedError");
};
"""

# The element that has the keyboard focus: never the page itself, always
# something the user can see.
FOCUS_JS = """
() => {
  let el = document.activeElement;
  if (!el || el === document.body || el === document.documentElement) return null;
  const id = el.id || el.dataset.testid || el.tagName;
  // A styled checkbox, and the language picker: the input is see-through,
  // its label shows it and its focus.
  if (el.matches(".toggle input, .language select")) el = el.closest("label");
  const box = el.getBoundingClientRect();
  return {
    id,
    visible: el.checkVisibility({ checkOpacity: true, checkVisibilityCSS: true })
      && box.width > 0 && box.height > 0,
  };
}
"""


def axe_violations(person: Any) -> list[dict[str, Any]]:
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(person.page, options=AXE_OPTIONS)
    return [
        {
            "id": v["id"],
            "help": v["help"],
            "nodes": [n["target"] for n in v["nodes"]][:5],
        }
        for v in results.response["violations"]
    ]


def assert_no_violations(person: Any, state: str, language: str = "en") -> None:
    # Wait for the state's transitions to settle: axe must see what users see.
    person.wait(
        "() => document.getAnimations().filter(a => a instanceof CSSTransition"
        " && a.playState === 'running').length === 0"
    )
    violations = axe_violations(person)
    assert violations == [], f"{state} ({language}): {violations}"
    # And every word of the state in the page's language.
    assert person.js("() => document.documentElement.lang") == language
    assert english_leftovers(person, language) == [], f"{state} ({language})"


def focused(person: Any) -> dict[str, Any]:
    info = person.js(FOCUS_JS)
    assert info is not None, "the keyboard focus fell to the page"
    assert info["visible"], f"the focused element is not visible: {info}"
    return info


@pytest.mark.parametrize("language", LANGUAGES)
def test_axe_finds_nothing_in_any_state(make_server, people, language):
    server = make_server()
    words = catalog(language)
    # First visit: the safety notice is open.
    newcomer = people(server, "newcomer", notice_accepted=False, locale=language)
    newcomer.wait("() => document.getElementById('welcome').open")
    assert_no_violations(newcomer, "first-visit notice", language)

    alice = people(server, "alice", locale=language)
    assert_no_violations(alice, "idle", language)

    alice.start()
    alice.wait_state("waiting")
    assert_no_violations(alice, "waiting", language)

    bob = people(server, "bob", locale=language)
    bob.start()
    for person in (alice, bob):
        person.wait_state("connected")
    alice.wait_call_connected()
    alice.wait("() => document.body.dataset.media === 'playing'")
    alice.testid("chat-input").fill("hello")
    alice.page.keyboard.press("Enter")
    bob.wait("() => document.querySelectorAll('.msg-stranger').length === 1")
    assert_no_violations(alice, "video call", language)

    alice.testid("report").click()
    alice.wait("() => document.getElementById('report-dialog').open")
    assert_no_violations(alice, "report dialog", language)
    alice.testid("report-cancel").click()

    bob.testid("stop").click()
    alice.wait("s => document.body.textContent.includes(s)", words["system.partnerLeft"])
    alice.wait_state("waiting")
    assert_no_violations(alice, "partner left", language)
    alice.testid("stop").click()

    carol = people(server, "carol", locale=language)
    dave = people(server, "dave", locale=language)
    carol.start(text=True)
    dave.start(text=True)
    for person in (carol, dave):
        person.wait_state("connected")
    carol.testid("chat-input").fill("hi by text")
    carol.page.keyboard.press("Enter")
    dave.wait("() => document.querySelectorAll('.msg-stranger').length === 1")
    assert_no_violations(dave, "text call", language)

    erin = people(server, "erin", locale=language)
    frank = people(server, "frank", locale=language)
    for person in (erin, frank):
        person.testid("voice-mode").check(force=True)
        person.testid("start").click()
    for person in (erin, frank):
        person.wait_state("connected")
    erin.wait_call_connected()
    assert_no_violations(erin, "voice call", language)

    denied = people(server, "denied", init_script=DENY_CAMERA_JS, locale=language)
    denied.start()
    denied.wait_state("blocked")
    assert_no_violations(denied, "camera denied", language)

    # Carol waits alone when the server dies (in a call the page would keep it and resume).
    dave.testid("stop").click()
    carol.wait_state("waiting")
    server.crash()
    carol.wait_state("reconnecting")
    carol.wait("() => !document.querySelector('[data-testid=notice]').hidden")
    assert_no_violations(carol, "reconnecting", language)


def test_keyboard_only_chat_next_report_stop(server, people):
    """Start, chat, Next, Report (Enter submits) and Stop without a mouse."""
    bob = people(server, "bob")
    bob.start()
    bob.wait_state("waiting")
    alice = people(server, "alice", notice_accepted=False)
    page = alice.page

    # The notice has the focus; Enter accepts it and Start is next.
    alice.wait("() => document.getElementById('welcome').open")
    assert focused(alice)["id"] == "notice-accept"
    page.keyboard.press("Enter")
    alice.wait("() => document.activeElement.id === 'start'")
    assert focused(alice)["id"] == "start"

    page.keyboard.press("Enter")  # Start
    alice.wait("() => window.omiro.stateLog.includes('starting')", timeout_ms=3_000)
    alice.wait_state("connected")
    bob.wait_state("connected")
    assert focused(alice)["id"] == "chat-input"
    page.keyboard.type("hi from the keyboard")
    page.keyboard.press("Enter")
    bob.wait("() => document.querySelectorAll('.msg-stranger').length === 1")
    assert bob.chat_entries()[-1]["text"] == "hi from the keyboard"

    # Tab to Next; Enter. Focus stays on Next (muted while waiting).
    carol = people(server, "carol")
    carol.start()
    carol.wait_state("waiting")
    alice.js("() => document.getElementById('next').focus()")
    assert focused(alice)["id"] == "next"
    old = alice.js("() => window.omiro.matchId")
    page.keyboard.press("Enter")
    alice.wait("old => window.omiro.state === 'connected' && window.omiro.matchId !== old", old)
    info = focused(alice)
    assert info["id"] in ("next", "chat-input"), info

    # Report from the keyboard: Tab reaches it; in the dialog Space picks a
    # reason and Enter submits the report (not Cancel).
    partner = alice.partner_id
    alice.js("() => document.getElementById('report').focus()")
    page.keyboard.press("Enter")
    alice.wait("() => document.getElementById('report-dialog').open")
    assert alice.js("() => document.querySelector('input[name=reason]:checked')") is None
    assert focused(alice)["id"] != "report-cancel"
    alice.js("() => document.querySelector('input[name=reason][value=spam]').focus()")
    page.keyboard.press("Space")
    # Every chat line from now on (the next match clears the log).
    # The reported side re-enters the queue at once and its next match clears
    # the log too, so its lines are collected the same way.
    for person in (alice, bob, carol):
        person.js(
            """() => {
              window.__lines = [];
              new MutationObserver((records) => {
                for (const r of records)
                  for (const n of r.addedNodes) window.__lines.push(n.textContent);
              }).observe(document.getElementById('chat-log'), { childList: true });
            }"""
        )
    page.keyboard.press("Enter")
    alice.wait("() => !document.getElementById('report-dialog').open")
    alice.wait("() => window.__lines.some(l => l.includes('You reported this stranger'))")
    alice.wait("() => document.activeElement !== document.body")
    focused(alice)
    reported = carol if carol.session_id == partner else bob
    reported.wait("() => window.__lines.some(l => l.includes('The chat was ended'))")

    # Stop: focus lands on Start, which is visible.
    alice.js("() => document.getElementById('stop').focus()")
    page.keyboard.press("Enter")
    alice.wait_state("idle")
    assert focused(alice)["id"] == "start"


# No entrance animation is under way: a chip that pops in (re-rendered when
# a language's words are applied) starts see-through for a frame or two.
SETTLED_JS = """
() => document.getAnimations().every(
  (a) => a.playState !== "running" || a.effect.getComputedTiming().iterations === Infinity)
"""


def test_tab_order_skips_what_cannot_be_seen(server, people):
    alice = people(server, "alice")
    seen = []
    for _ in range(12):
        alice.page.keyboard.press("Tab")
        alice.wait(SETTLED_JS)
        info = alice.js(FOCUS_JS)
        if info is None:
            break
        seen.append(info)
    assert seen, "Tab reached nothing"
    assert all(item["visible"] for item in seen), seen
    ids = [item["id"] for item in seen]
    assert "mute" not in ids
    assert "camera" not in ids


def test_enter_in_report_dialog_without_a_reason_sends_nothing(server, pair):
    alice, bob = pair(server)
    alice.testid("report").click()
    alice.wait("() => document.getElementById('report-dialog').open")
    alice.page.keyboard.press("Enter")
    # The form does not submit without a reason: still open, still matched.
    assert alice.js("() => document.getElementById('report-dialog').open")
    assert alice.state == "connected"
    alice.page.keyboard.press("Escape")
    alice.wait("() => !document.getElementById('report-dialog').open")
    assert alice.state == "connected"
    assert bob.state == "connected"


def test_screen_reader_manners(make_server, people):
    server = make_server()
    alice = people(server, "alice")
    # Neither the online count nor the countdown is a live region.
    assert alice.testid("online-count").get_attribute("aria-live") is None
    assert alice.js("() => document.getElementById('remote-video').getAttribute('aria-label')")
    assert alice.js("() => document.getElementById('local-video').getAttribute('aria-label')")
    assert alice.js("() => document.getElementById('media-controls').inert")

    alice.start()
    alice.wait_state("waiting")
    mute = alice.testid("mute")
    name = mute.evaluate("el => el.textContent.trim()")
    mute.click()
    assert mute.get_attribute("aria-pressed") == "true"
    assert mute.evaluate("el => el.textContent.trim()") == name  # only the state changes

    # Single-key shortcuts work, and can be turned off in the notice.
    alice.page.keyboard.press("m")
    assert mute.get_attribute("aria-pressed") == "false"
    alice.testid("open-notice").click()
    alice.testid("shortcuts").uncheck()
    alice.testid("notice-accept").click()
    alice.wait("() => !document.getElementById('mute').hasAttribute('aria-keyshortcuts')")
    alice.page.keyboard.press("m")
    assert mute.get_attribute("aria-pressed") == "false"

    # Reconnecting: the alert is written once, the countdown ticks outside
    # it, and the Retry button is one element for the whole wait.
    alice.js(
        """() => {
          window.__alerts = 0;
          const text = document.getElementById('notice-text');
          new MutationObserver(() => { window.__alerts += 1; })
            .observe(text, { childList: true, characterData: true, subtree: true });
        }"""
    )
    server.crash()
    alice.wait_state("reconnecting")
    retry = alice.testid("retry")
    retry.focus()
    alice.wait("() => window.omiro.reconnects.length >= 1")
    first = alice.js("() => document.getElementById('notice-countdown').textContent")
    alice.wait(
        "first => document.getElementById('notice-countdown').textContent !== first",
        first,
        timeout_ms=5_000,
    )
    assert alice.js("() => document.activeElement.dataset.testid") == "retry"
    assert alice.js("() => window.__alerts") <= 2
    assert alice.js("() => document.getElementById('notice-countdown').getAttribute('aria-hidden')")
    assert alice.testid("online-count").inner_text() == "offline"


# The fake camera calls itself a virtual camera; its video is a canvas
# painted black (so the "shows nothing" notice comes too).
BLACK_VIRTUAL_CAMERA_JS = """
(() => {
  const devices = navigator.mediaDevices;
  const original = devices.getUserMedia.bind(devices);
  devices.getUserMedia = async (constraints) => {
    const real = await original({ audio: constraints.audio || false, video: false });
    const canvas = document.createElement("canvas");
    canvas.width = 320;
    canvas.height = 240;
    const context = canvas.getContext("2d");
    const paint = () => { context.fillStyle = "#000"; context.fillRect(0, 0, 320, 240); };
    paint();
    setInterval(paint, 100);
    const video = canvas.captureStream(10).getVideoTracks()[0];
    Object.defineProperty(video, "label", { value: "ManyCam Virtual Webcam" });
    return new MediaStream([...real.getAudioTracks(), video]);
  };
})();
"""


@pytest.mark.parametrize("language", LANGUAGES)
def test_axe_finds_nothing_in_the_safety_states(make_server, people, language):
    server = make_server()
    alice = people(
        server,
        "alice",
        locale=language,
        init_script="window.__omiroTestHooks = true;"
        "localStorage.setItem('omiro.nudity-filter', 'on');",
    )
    alice.testid("open-notice").click()
    alice.wait("() => document.getElementById('welcome').open")
    assert_no_violations(alice, "safety settings", language)
    alice.testid("notice-accept").click()

    bob = people(server, "bob", init_script=BLACK_VIRTUAL_CAMERA_JS, locale=language)
    alice.start()
    bob.start()
    for person in (alice, bob):
        person.wait_state("connected")
    alice.wait("() => document.body.dataset.media === 'playing'")
    alice.wait("() => !document.getElementById('remote-camera-kind').hidden")
    assert_no_violations(alice, "blurred video, virtual camera", language)

    alice.wait(
        "() => document.querySelector('[data-testid=blank-next]') !== null", timeout_ms=10_000
    )
    assert_no_violations(alice, "camera shows nothing", language)

    alice.testid("show-video").click()
    alice.wait("() => !window.omiro.veil.blurred")
    assert_no_violations(alice, "video shown", language)

    alice.wait("() => window.omiro.filter.state === 'ready'", timeout_ms=60_000)
    alice.js("() => window.__omiroTest.filterVerdict({Porn: 0.9, Hentai: 0.05, Neutral: 0.05})")
    alice.wait("() => window.omiro.veil.reason === 'filter'")
    alice.wait("() => document.querySelector('[data-testid=filter-report]') !== null")
    assert_no_violations(alice, "nudity filter blurred the video", language)

    alice.testid("filter-report").click()
    alice.wait("() => document.getElementById('report-dialog').open")
    assert_no_violations(alice, "report with a preselected reason", language)
    assert focused(alice)["id"] == "INPUT"  # the preselected reason has the focus
    alice.page.keyboard.press("Escape")
    alice.wait("() => !document.getElementById('report-dialog').open")
    # Bob saw his own camera named, and the stranger's blurred video.
    assert bob.testid("local-camera-kind").is_visible()
    assert_no_violations(bob, "own virtual camera", language)
