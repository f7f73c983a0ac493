"""The rough edges a new user hit, each with its test (issue: "a page for the
world and for phones")."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.browser

TOUCH = {"has_touch": True, "is_mobile": True, "device_scale_factor": 3}

# Everything written into a live region (status, alert, aria-live) from now on.
LIVE_WRITES_JS = """
() => {
  window.__said = [];
  const regions = document.querySelectorAll('[aria-live], [role=status], [role=alert]');
  for (const region of regions) {
    new MutationObserver(() => {
      const text = region.textContent.trim();
      if (text) window.__said.push(text);
    }).observe(region, { childList: true, characterData: true, subtree: true });
  }
}
"""


def started(server: Any, people: Any, **options: Any) -> tuple[Any, Any]:
    alice = people(server, "alice", **options)
    bob = people(server, "bob")
    alice.start()
    bob.start()
    for person in (alice, bob):
        person.wait_state("connected")
    return alice, bob


def test_closing_the_tab_during_a_chat_asks_first(server, people):
    alice, _ = started(server, people)
    asked: list[str] = []

    def dismiss(dialog: Any) -> None:
        asked.append(dialog.type)
        dialog.dismiss()  # "stay on the page"

    alice.page.on("dialog", dismiss)
    alice.page.close(run_before_unload=True)
    alice.wait("() => true")  # the page is still there
    assert asked == ["beforeunload"]
    assert alice.state == "connected"
    # Without a chat, nothing is asked.
    alice.testid("stop").click()
    alice.wait_state("idle")
    alice.page.remove_listener("dialog", dismiss)
    alice.page.close(run_before_unload=True)
    assert asked == ["beforeunload"]


def test_esc_in_the_message_box_skips_only_when_pressed_twice(server, people):
    alice, bob = started(server, people)
    match = alice.js("() => window.omiro.matchId")
    box = alice.testid("chat-input")
    box.fill("half a sent")
    box.press("Escape")
    assert alice.js("() => window.omiro.matchId") == match  # not skipped
    hint = alice.testid("esc-hint")
    assert "Esc again" in hint.inner_text()
    assert hint.get_attribute("role") == "status"
    # Typing on disarms it: the next Esc warns again.
    box.press("e")
    assert hint.inner_text() == ""
    box.press("Escape")
    assert alice.js("() => window.omiro.matchId") == match
    seen = alice.js("() => window.omiro.stateLog.length")
    box.press("Escape")  # the second, within the few seconds
    assert alice.js("() => window.omiro.matchId") != match
    # Skipped into the queue (the two may already have met again since).
    assert "waiting" in alice.js("(n) => window.omiro.stateLog.slice(n)", seen)
    # Nobody else is here: the two meet again. Outside a text field, Esc is
    # Next at once, as before.
    alice.wait("old => window.omiro.matchId && window.omiro.matchId !== old", match)
    bob.wait("old => window.omiro.matchId && window.omiro.matchId !== old", match)
    match = alice.js("() => window.omiro.matchId")
    alice.testid("chat-input").blur()
    alice.page.keyboard.press("Escape")
    assert alice.js("() => window.omiro.matchId") != match


def inside(person: Any, testid: str) -> dict[str, Any]:
    return person.testid(testid).evaluate(
        """(el) => { const r = el.getBoundingClientRect();
          const top = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
          return { inside: r.top >= 0 && r.bottom <= innerHeight && r.left >= 0
                     && r.right <= innerWidth,
                   onTop: el === top || el.contains(top),
                   whole: el.scrollWidth <= el.clientWidth + 1 }; }"""
    )


@pytest.mark.parametrize("size", [(844, 390), (568, 320), (320, 568)])
def test_dialog_buttons_stay_in_sight_on_short_screens(server, people, size):
    width, height = size
    viewport = {"width": width, "height": height}
    newcomer = people(server, "newcomer", viewport=viewport, notice_accepted=False)
    newcomer.wait("() => document.getElementById('welcome').open")
    # Without scrolling: the accept button is on screen, whole, on top.
    assert inside(newcomer, "notice-accept") == {"inside": True, "onTop": True, "whole": True}
    newcomer.testid("notice-accept").click()

    alice, _ = started(server, people, viewport=viewport)
    alice.testid("report").click()
    alice.wait("() => document.getElementById('report-dialog').open")
    for testid in ("report-confirm", "report-cancel"):
        assert inside(alice, testid) == {"inside": True, "onTop": True, "whole": True}, testid


# How wide the field's placeholder is, against the room the field has for it.
PLACEHOLDER_FITS_JS = """
(input) => {
  const style = getComputedStyle(input);
  const c = document.createElement("canvas").getContext("2d");
  c.font = `${style.fontWeight} ${style.fontSize} ${style.fontFamily}`;
  const room = input.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
  return { text: input.placeholder, needs: c.measureText(input.placeholder).width, room };
}
"""


@pytest.mark.parametrize(
    ("size", "language"),
    [
        ((844, 390), "en"),
        ((844, 390), "pt"),
        ((844, 390), "de"),
        ((390, 844), "fr"),
        ((320, 568), "es"),
    ],
)
def test_add_interests_is_not_cut_off(server, people, size, language):
    width, height = size
    alice = people(server, "alice", viewport={"width": width, "height": height}, locale=language)
    fits = alice.testid("interests").evaluate(PLACEHOLDER_FITS_JS)
    assert fits["needs"] <= fits["room"], fits
    assert not alice.js("() => document.documentElement.scrollWidth > innerWidth + 1")


def test_online_count_is_people_here_never_zero_and_no_idle_tabs(server, people):
    count = "() => document.querySelector('[data-testid=online-count]').textContent"
    alice = people(server, "alice")
    alice.wait(f"() => ({count})() === 'Just you here'")
    idle = people(server, "idle")  # a tab that never pressed Start: not "here"
    alice.start()
    alice.wait_state("waiting")
    alice.wait(f"() => ({count})() === 'Just you here'")
    bob = people(server, "bob")
    bob.start()
    alice.wait_state("connected")
    alice.wait(f"() => ({count})() === '2 people here'")
    # Bob stops: his page leaves the server and is counted no more.
    bob.testid("stop").click()
    bob.wait_state("idle")
    alice.wait_server_stats(online=1, waiting=1)
    alice.js("() => document.dispatchEvent(new Event('visibilitychange'))")
    alice.wait(f"() => ({count})() === 'Just you here'")
    # Bob's own page, idle: the one person connected, plus him reading.
    bob.js("() => document.dispatchEvent(new Event('visibilitychange'))")
    bob.wait(f"() => ({count})() === '2 people here'")
    assert idle.js("() => window.omiro.signaling.ready") is False


def test_no_keyboard_hints_on_touch_screens(server, people):
    alice, _ = started(server, people, viewport={"width": 390, "height": 844}, **TOUCH)
    assert alice.js("() => document.body.dataset.touch") == "true"
    assert alice.page.locator("#next kbd").is_hidden()
    assert "Esc" not in (alice.testid("next").get_attribute("title") or "")
    assert "(M)" not in (alice.testid("mute").get_attribute("title") or "")
    assert "(Enter)" not in (alice.testid("chat-send").get_attribute("title") or "")
    assert alice.testid("next").get_attribute("aria-keyshortcuts") is None
    assert "Esc" not in alice.js("() => document.getElementById('chat-hint').textContent")
    # On a laptop they are there.
    desk, _ = started(server, people)
    assert desk.page.locator("#next kbd").is_visible()
    assert desk.testid("next").get_attribute("aria-keyshortcuts") == "Escape"


# A focus ring the user can see, on a button that cannot be used now.
RING_ON_DISABLED_JS = """
() => [...document.querySelectorAll("button")].filter((b) =>
  b.matches(":focus-visible") && (b.disabled || b.getAttribute("aria-disabled") === "true")
  && getComputedStyle(b).outlineStyle !== "none").map((b) => b.id)
"""


def test_no_focus_ring_left_on_a_disabled_button_after_a_tap(server, people):
    alice, bob = started(server, people, viewport={"width": 390, "height": 844}, **TOUCH)
    alice.testid("chat-input").fill("tapped")
    alice.testid("chat-send").tap()
    bob.wait("() => document.querySelectorAll('.msg-stranger').length === 1")
    assert alice.testid("chat-send").is_disabled()
    assert alice.js(RING_ON_DISABLED_JS) == []
    # The keyboard stays up: the focus is still in the message box.
    assert alice.js("() => document.activeElement.id") == "chat-input"
    # Next, tapped: off until the next stranger comes (at once: nobody else
    # is here), and no ring on it meanwhile.
    alice.testid("next").tap()
    assert alice.js(RING_ON_DISABLED_JS) == []
    alice.wait("() => window.omiro.stateLog.at(-2) === 'waiting'")
    alice.wait_state("connected")
    # The stranger leaves: Next is off while the page looks again.
    bob.testid("stop").click()
    alice.wait_state("waiting")
    assert alice.testid("next").get_attribute("aria-disabled") == "true"
    assert alice.js(RING_ON_DISABLED_JS) == []
    alice.testid("next").tap(force=True)  # a tap on it while it is off
    assert alice.js(RING_ON_DISABLED_JS) == []


def test_the_next_button_is_named_next(server, people):
    alice, _ = started(server, people)
    button = alice.page.get_by_role("button", name="Next", exact=True)
    assert button.count() == 1
    assert button.get_attribute("aria-keyshortcuts") == "Escape"


def test_a_match_and_a_departure_are_said_once(server, people):
    alice = people(server, "alice")
    bob = people(server, "bob")
    alice.start()
    alice.wait_state("waiting")
    alice.js(LIVE_WRITES_JS)
    bob.start()
    alice.wait_state("connected")
    bob.testid("chat-input").fill("hola")
    bob.page.keyboard.press("Enter")
    alice.wait("() => window.__said.some(s => s.includes('hola'))")
    said = alice.js("() => window.__said")
    assert len([s for s in said if "talking with" in s]) == 1, said
    assert len([s for s in said if "hola" in s]) == 1, said
    bob.testid("stop").click()
    alice.wait("() => window.__said.some(s => s.includes('left'))")
    alice.wait_state("waiting")
    said = alice.js("() => window.__said")
    gone = [s for s in said if "left" in s or "disconnected" in s]
    assert len(gone) == 1, said


# The page's level-1 headings, as the accessibility tree has them (the
# welcome's leaves it once its panel has faded out).
H1_TEXTS_JS = """
() => [...document.querySelectorAll("h1")]
  .filter((h) => h.checkVisibility({ visibilityProperty: true }))
  .map((h) => h.textContent)
"""


def test_a_heading_during_a_call(server, people):
    alice, _ = started(server, people)
    alice.wait(f"() => ({H1_TEXTS_JS})().length === 1", timeout_ms=5_000)
    headings = alice.page.get_by_role("heading", level=1)
    assert headings.count() == 1
    assert headings.first.inner_text() == "Video chat with a stranger"
    alice.testid("stop").click()
    alice.wait_state("idle")
    assert alice.page.get_by_role("heading", level=1).first.text_content() == "Meet someone new."


# Infinite animations that run on something nobody can see.
UNSEEN_RUNNING_JS = """
() => document.getAnimations().filter((a) => {
  const forever = a.effect.getComputedTiming().iterations === Infinity;
  if (a.playState !== "running" || !forever) return false;
  const el = a.effect.target;
  const backdrop = el.closest(".backdrop");
  if (backdrop) return getComputedStyle(document.querySelector(".stage")).display !== "none"
    && document.body.dataset.active === "true" && innerWidth <= 700 && innerHeight > innerWidth;
  return !el.checkVisibility({ visibilityProperty: true });
}).map((a) => `${a.animationName} on ${a.effect.target.className}`)
"""
RUNNING_INFINITE_JS = """
() => document.getAnimations().filter(
  (a) => a.effect.getComputedTiming().iterations === Infinity && a.playState === "running").length
"""


def test_animations_nobody_sees_do_not_run(server, people):
    viewport = {"width": 390, "height": 844}
    alice = people(server, "alice", viewport=viewport, motion=True, **TOUCH)
    assert alice.js(UNSEEN_RUNNING_JS) == [], "idle"
    assert alice.js(RUNNING_INFINITE_JS) > 0  # the backdrop moves while seen
    bob = people(server, "bob")
    alice.start()
    alice.wait_state("waiting")
    # (while the radar fades in, it is still "hidden" for a frame)
    alice.wait(f"() => ({UNSEEN_RUNNING_JS})().length === 0")
    bob.start()
    alice.wait_state("connected")
    alice.wait("() => document.body.dataset.media === 'playing'")
    # The call covers the backdrop on an upright phone: it rests.
    alice.wait(f"() => ({UNSEEN_RUNNING_JS})().length === 0")
    backdrop = alice.js(
        "() => document.getAnimations().filter(a => a.effect.target.closest('.backdrop'))"
        ".map(a => a.playState)"
    )
    assert backdrop, "the backdrop has animations"
    assert set(backdrop) == {"paused"}, backdrop
    # Reduced motion: nothing runs for ever, anywhere.
    still = people(server, "still")
    assert still.js(RUNNING_INFINITE_JS) == 0


def test_the_camera_waits_until_the_server_answers(make_server, people):
    server = make_server()
    alice = people(server, "alice")
    port = server.port
    assert server.stop() == 0  # nobody answers on that port now
    alice.start()
    alice.wait_state("reconnecting")
    alice.wait("() => window.omiro.reconnects.length >= 1")
    assert alice.probe()["gum"] == 0
    assert alice.js("() => window.omiro.getUserMediaCalls") == 0
    make_server(port=port)
    alice.testid("retry").click()
    alice.wait_state("waiting")
    assert alice.probe()["gum"] == 1


def test_the_same_stranger_is_recognised_after_a_reload(server, people):
    alice, bob = started(server, people)
    old_session = alice.session_id
    pair = alice.js("() => window.omiro.pair")
    assert pair
    assert pair == bob.js("() => window.omiro.pair")
    alice.page.once("dialog", lambda dialog: dialog.accept())  # "leave the page"
    alice.page.reload()
    alice.page.wait_for_function("() => window.omiro !== undefined")
    bob.wait_state("waiting")
    alice.start()
    for person in (alice, bob):
        person.wait_state("connected")
    assert alice.session_id != old_session  # a new session: only the pair tells
    for person in (alice, bob):
        assert "same stranger" in person.testid("status").inner_text()
        assert any("back with the same stranger" in e["text"] for e in person.chat_entries())


def test_skipping_too_fast_says_so_and_does_not_pretend_to_wait(make_server, people):
    server = make_server(OMIRO_LIMITS_NEXTS_PER_MINUTE="2")
    alice, bob = started(server, people)
    # Two skips are allowed in the minute (the first join spent one)...
    alice.testid("next").click()
    alice.wait_state("connected")  # nobody else here: the same stranger again
    match = alice.js("() => window.omiro.matchId")
    # ...the next is refused: the page says so, and when it will look again.
    alice.testid("next").click()
    alice.wait_state("cooldown")
    status = alice.testid("status").inner_text()
    assert "skipping too fast" in status, status
    seconds = alice.js("() => window.omiro.cooldownS")
    assert 1 <= seconds <= 60
    assert f"in {seconds} seconds" in status or f"in {seconds + 1} seconds" in status, status
    assert "Looking again in" in alice.testid("notice").inner_text()
    assert alice.testid("next").get_attribute("aria-disabled") == "true"
    assert "Looking for someone" not in status
    # Not queued, not matched: the server holds Alice nowhere, and Bob, whose
    # match ended, looks for someone else.
    bob.wait_state("waiting")
    alice.wait_server_stats(online=2, waiting=1)
    assert alice.js("() => window.omiro.matchId") is None
    assert match is not None
    # Esc and Next do nothing meanwhile.
    alice.page.keyboard.press("Escape")
    assert alice.state == "cooldown"
