"""Small things a careful page gets right: hidden tabs rest, the logo keeps the chat."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.browser

# Pretend the tab went to the background (or came back), as the browser would.
SET_HIDDEN_JS = """
(hidden) => {
  Object.defineProperty(document, "hidden", { configurable: true, get: () => hidden });
  Object.defineProperty(document, "visibilityState", {
    configurable: true, get: () => (hidden ? "hidden" : "visible"),
  });
  document.dispatchEvent(new Event("visibilitychange"));
}
"""
RUNNING_INFINITE_JS = """
() => document.getAnimations().filter(
  (a) => a.effect.getComputedTiming().iterations === Infinity && a.playState === "running"
).length
"""


def test_animations_pause_while_the_tab_is_hidden(server, people):
    alice = people(server, "alice", motion=True)
    assert alice.js(RUNNING_INFINITE_JS) > 0  # the backdrop moves while seen
    alice.js(SET_HIDDEN_JS, True)
    alice.wait(f"() => ({RUNNING_INFINITE_JS})() === 0")
    assert alice.js("() => document.body.dataset.visible") == "false"
    alice.js(SET_HIDDEN_JS, False)
    alice.wait(f"() => ({RUNNING_INFINITE_JS})() > 0")


def test_logo_click_during_a_chat_keeps_it(server, pair):
    alice, bob = pair(server)
    alice.js("() => { window.__samePage = true; }")
    alice.page.locator(".brand").click()
    assert alice.js("() => window.__samePage === true")  # no reload
    assert alice.state == "connected"
    assert bob.state == "connected"


def test_logo_reloads_when_idle(server, people):
    alice = people(server, "alice")
    alice.js("() => { window.__samePage = true; }")
    with alice.page.expect_navigation():
        alice.page.locator(".brand").click()
    alice.page.wait_for_function("() => window.omiro !== undefined")
    assert alice.js("() => window.__samePage") is None


def test_text_only_is_explained_on_screen(server, people):
    alice = people(server, "alice")
    hint = alice.page.locator("#text-mode-hint")
    assert hint.is_visible()
    assert "camera" in hint.inner_text()
    described = alice.testid("text-mode").get_attribute("aria-describedby")
    assert described == "text-mode-hint"
    assert "camera" in alice.page.locator("#camera-why").inner_text()
