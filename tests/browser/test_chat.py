"""The text chat beside the call: both ways, literal text, typing, limits, unread flash."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.browser

# Lets a test pretend the tab is in the background.
HIDDEN_TAB_JS = """
Object.defineProperty(Document.prototype, "hidden", {
  configurable: true,
  get() { return window.__tabHidden === true; },
});
window.__setTabHidden = (hidden) => {
  window.__tabHidden = hidden;
  document.dispatchEvent(new Event("visibilitychange"));
};
"""

NASTY = (
    "<script>window.__pwned = 1</script> \"double\" 'single' & <b>bold</b>"
    ' <img src=x onerror="window.__pwned = 2">'
)
LOG = "document.querySelector('[data-testid=chat-log]')"


def test_chat_both_ways_literal_text_and_typing_indicator(make_server, people):
    server = make_server(OMIRO_LIMITS_MAX_CHAT_LENGTH="280")
    alice = people(server, "alice", init_script=HIDDEN_TAB_JS)
    bob = people(server, "bob")
    for person in (alice, bob):
        person.start(text=True)
    for person in (alice, bob):
        person.wait_state("connected")

    # The length limit comes from the server's hello.
    for person in (alice, bob):
        assert person.testid("chat-input").get_attribute("maxlength") == "280"

    # Whitespace is not a message.
    alice.testid("chat-input").fill("   ")
    assert alice.testid("chat-send").is_disabled()

    # Alice -> Bob with Enter: markup arrives as literal text, nothing runs.
    alice.testid("chat-input").fill(NASTY)
    alice.testid("chat-input").press("Enter")
    bob.wait(f"() => {LOG}.querySelectorAll('.msg-stranger').length === 1")
    assert bob.chat_entries()[-1] == {
        "cls": "msg msg-stranger",
        "author": "Stranger",
        "text": NASTY,
    }
    assert alice.chat_entries()[-1] == {"cls": "msg msg-you", "author": "You", "text": NASTY}
    for person in (alice, bob):
        assert person.js(f"() => {LOG}.querySelectorAll('script, b, img').length") == 0
        assert person.js("() => window.__pwned") is None
    assert alice.testid("chat-input").input_value() == ""

    # Bob -> Alice with the send button, while Alice's tab is in the background:
    # her tab title flashes until she comes back.
    alice.js("() => window.__setTabHidden(true)")
    bob.testid("chat-input").fill("hi, I'm Bob")
    bob.testid("chat-send").click()
    alice.wait(f'() => {LOG}.textContent.includes("hi, I\'m Bob")')
    assert alice.chat_entries()[-1]["author"] == "Stranger"
    alice.wait("() => document.title.includes('New message')")
    alice.js("() => window.__setTabHidden(false)")
    alice.wait("() => document.title === 'Omiro · talk to strangers'")

    # Typing shows on the other side, and clears when the text is erased...
    typing = bob.testid("typing-indicator")
    assert typing.is_hidden()
    alice.testid("chat-input").press_sequentially("hel")
    bob.wait("() => !document.querySelector('[data-testid=typing-indicator]').hidden")
    assert typing.inner_text().strip() == "Stranger is typing…"
    for _ in range(3):
        alice.testid("chat-input").press("Backspace")
    bob.wait("() => document.querySelector('[data-testid=typing-indicator]').hidden")

    # ...and when the message is sent.
    alice.testid("chat-input").press_sequentially("ok")
    bob.wait("() => !document.querySelector('[data-testid=typing-indicator]').hidden")
    alice.testid("chat-input").press("Enter")
    bob.wait(f"() => [...{LOG}.querySelectorAll('.msg-text')].some(e => e.textContent === 'ok')")
    bob.wait("() => document.querySelector('[data-testid=typing-indicator]').hidden")

    # Shift+Enter is a new line, not a send.
    bob.testid("chat-input").fill("two")
    bob.testid("chat-input").press("Shift+Enter")
    bob.testid("chat-input").press_sequentially("lines")
    bob.testid("chat-input").press("Enter")
    alice.wait(
        f"() => [...{LOG}.querySelectorAll('.msg-text')].some(e => e.textContent === 'two\\nlines')"
    )


# Counts the "typing" frames a page hears.
TYPING_HEARD_JS = """
window.__typingHeard = [];
const RealSocket = WebSocket;
window.WebSocket = class extends RealSocket {
  constructor(...args) {
    super(...args);
    this.addEventListener("message", (event) => {
      const frame = JSON.parse(event.data);
      if (frame.op === "typing") window.__typingHeard.push(frame.data.typing);
    });
  }
};
"""


def until(person, predicate: str, wait_s: float = 15) -> None:
    """Polls from here: the page's own timers stand still under a paused clock."""
    deadline = time.monotonic() + wait_s
    while not person.js(predicate):
        assert time.monotonic() < deadline, f"not true within {wait_s} s: {predicate}"
        time.sleep(0.05)


def test_a_long_message_typed_without_a_pause_keeps_the_indicator(make_server, people):
    """The partner's page drops a "typing" that is not renewed within 8 s."""
    server = make_server()
    alice = people(server, "alice")
    bob = people(server, "bob", init_script=TYPING_HEARD_JS)
    alice.start(text=True)
    bob.start(text=True)
    for person in (alice, bob):
        person.wait_state("connected")
    # Both pages' timers are driven by hand from here on (the clock stands still).
    for person in (alice, bob):
        person.page.clock.install()
        person.page.clock.pause_at(time.time() + 1)
    shown = "() => !document.querySelector('[data-testid=typing-indicator]').hidden"
    alice.testid("chat-input").press_sequentially("a")
    until(bob, "() => window.__typingHeard.length === 1")
    until(bob, shown)
    # A key every 2.5 s for 12.5 s: never a pause, so never "false"; "true" again
    # every 5 s, and Bob's page keeps showing it past its 8 s.
    for step in range(1, 6):
        for person in (alice, bob):
            person.page.clock.run_for(2_500)
        alice.testid("chat-input").press_sequentially("a")
        heard = 1 + step // 2
        until(bob, f"() => window.__typingHeard.length === {heard}")
        assert bob.js("() => window.__typingHeard") == [True] * heard
        assert bob.js(shown), f"hidden after {step * 2.5} s of typing"
    # The pause: "false" after 3 s without a key, and the line goes.
    alice.page.clock.run_for(3_000)
    until(bob, "() => window.__typingHeard.at(-1) === false")
    until(bob, "() => document.querySelector('[data-testid=typing-indicator]').hidden")
