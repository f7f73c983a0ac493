"""The entry gate in the real page, end to end, one test per kind.

Each test runs a real ``omiro serve`` with its gate, and real Chromium
people: refused without the phrase or the code, admitted with it, then
matched and calling or chatting. Raid mode: a pair keeps chatting while a
newcomer is told "back soon", and gets in once it is off. The screens
are checked for what they say (in every language: no English left), for
focus and the live error, and at 320 px.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import argon2
import pytest
from i18n_support import LANGUAGES, english_leftovers
from support import AXE_OPTIONS

pytestmark = pytest.mark.browser

PHRASE = "the owl flies at midnight"
ADMIN_TOKEN = "an-admin-token-for-the-browser-tests!"
SMALL_PHONE = {"width": 320, "height": 568}
DIALOG = "document.querySelector('[data-testid=gate-dialog]')"
BROWSER_LOCALE = {
    "en": "en-GB",
    "es": "es-ES",
    "pt": "pt-BR",
    "fr": "fr-FR",
    "de": "de-DE",
    "ar": "ar-EG",
}


def axe_violations(person: Any) -> list[dict[str, Any]]:
    """What axe-core (WCAG 2.x A/AA) finds on the page as it is now."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(person.page, options=AXE_OPTIONS)
    return [
        {"id": v["id"], "nodes": [n["target"] for n in v["nodes"]][:5]}
        for v in results.response["violations"]
    ]


def admin(server: Any, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        server.url + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read() or b"null")


def gate_shown(person: Any) -> dict[str, Any]:
    person.wait(f"() => {DIALOG}.open")
    return person.js(
        """() => ({
          title: document.querySelector('[data-testid=gate-title]').textContent,
          error: document.querySelector('[data-testid=gate-error]').textContent,
          focused: document.activeElement?.dataset?.testid ?? null,
          invalid: document.querySelector('[data-testid=gate-input]').getAttribute('aria-invalid'),
          type: document.querySelector('[data-testid=gate-input]').type,
          label: document.querySelector('#gate-field').textContent.trim(),
          field: !document.querySelector('#gate-field').hidden,
        })"""
    )


def chat_once(sender: Any, receiver: Any, text: str) -> None:
    sender.testid("chat-input").fill(text)
    sender.testid("chat-input").press("Enter")
    receiver.wait(
        "t => [...document.querySelectorAll('[data-testid=chat-log] .msg-stranger .msg-text')]"
        ".some(e => e.textContent === t)",
        text,
    )


def test_passphrase_refused_without_it_then_admitted_remembered_and_calling(make_server, people):
    server = make_server(
        OMIRO_GATE_KIND="passphrase",
        OMIRO_GATE_PASSPHRASE_HASH=argon2.PasswordHasher().hash(PHRASE),
    )
    alice = people(server, "alice")
    bob = people(server, "bob")
    for person in (alice, bob):
        person.start()
        shown = gate_shown(person)
        assert shown["title"] == "This chat is for members"
        assert (shown["type"], shown["focused"], shown["field"]) == ("password", "gate-input", True)
        assert shown["label"] == "Passphrase"
        assert person.state == "idle"  # refused: no session, no camera asked for
        assert person.probe()["gum"] == 0
    assert axe_violations(alice) == [], "the passphrase screen"
    # A wrong phrase: said in the live region, the field marked, the focus kept.
    alice.testid("gate-input").fill("the owl sleeps")
    alice.testid("gate-submit").click()
    alice.wait("() => document.querySelector('[data-testid=gate-error]').textContent !== ''")
    shown = gate_shown(alice)
    assert shown["error"] == "That is not the passphrase. Check it and try again."
    assert (shown["invalid"], shown["focused"]) == ("true", "gate-input")
    assert axe_violations(alice) == [], "the passphrase screen with its error"
    # The right phrase, typed (Enter submits): in, matched, calling.
    for person in (alice, bob):
        person.testid("gate-input").fill(PHRASE)
        person.testid("gate-input").press("Enter")
        person.wait(f"() => !{DIALOG}.open")
    for person in (alice, bob):
        person.wait_state("connected")
    for person in (alice, bob):
        person.wait_call_connected()
    alice.wait_media_flowing()
    # Remembered: after a reload the gate does not ask again.
    bob.page.reload()
    bob.page.wait_for_function("() => window.omiro !== undefined", timeout=10_000)
    bob.start()
    bob.wait("() => window.omiro.stateLog.includes('waiting')")  # (maybe matched again since)
    assert not bob.js(f"() => {DIALOG}.open")
    assert bob.js("() => document.cookie") == ""  # the pass is HttpOnly: no script reads it


def test_invite_link_admits_a_bad_code_is_explained_then_matched_and_chatting(make_server, people):
    server = make_server(OMIRO_GATE_KIND="invite", OMIRO_ADMIN_TOKEN=ADMIN_TOKEN)
    made = admin(server, "POST", "/admin/invites", {"uses": 2, "note": "browser test"})
    code = made["code"]
    # Alice follows the link: the code leaves the address bar and lets her in.
    alice = people(server, "alice", url=f"{server.url}/?invite={code}")
    assert "invite" not in alice.js("() => location.href")
    alice.start(text=True)
    alice.wait_state("waiting")
    assert not alice.js(f"() => {DIALOG}.open")
    # Bob's link is mistyped: the screen says so; he pastes the right code.
    bob = people(server, "bob", url=f"{server.url}/?invite={code[:-2]}xx")
    bob.start(text=True)
    bob.wait("() => document.querySelector('[data-testid=gate-error]').textContent !== ''")
    shown = gate_shown(bob)
    assert shown["title"] == "Open by invitation"
    assert shown["error"] == (
        "This invite code is not valid. Check the link, or ask for a new invite."
    )
    assert (shown["type"], shown["focused"]) == ("text", "gate-input")
    assert axe_violations(bob) == [], "the invite screen with its error"
    bob.testid("gate-input").fill(code)
    bob.testid("gate-submit").click()
    for person in (alice, bob):
        person.wait_state("connected")
    chat_once(alice, bob, "hello from the club")
    chat_once(bob, alice, "hi!")
    # The invite had two uses: Carol's link is used up, and the page says so.
    carol = people(server, "carol", url=f"{server.url}/?invite={code}")
    carol.start(text=True)
    carol.wait("() => document.querySelector('[data-testid=gate-error]').textContent !== ''")
    assert gate_shown(carol)["error"] == (
        "This invite has been used as many times as it allows. Ask for a new one."
    )
    # Without a link at all, the screen asks for a code; Esc closes it.
    dave = people(server, "dave")
    dave.start(text=True)
    assert gate_shown(dave)["error"] == ""
    dave.page.keyboard.press("Escape")
    dave.wait(f"() => !{DIALOG}.open")
    assert dave.js("() => document.activeElement?.dataset?.testid") == "start"


def test_raid_mode_says_back_soon_to_newcomers_while_a_pair_chats(make_server, people):
    server = make_server(OMIRO_ADMIN_TOKEN=ADMIN_TOKEN)
    alice = people(server, "alice")
    bob = people(server, "bob")
    for person in (alice, bob):
        person.start(text=True)
    for person in (alice, bob):
        person.wait_state("connected")
    assert admin(server, "PUT", "/admin/raid", {"on": True, "retry_after_s": 60})["on"] is True
    carol = people(server, "carol")
    carol.start(text=True)
    carol.wait_state("reconnecting")
    notice = carol.testid("notice")
    assert "New chats are paused for a moment. Back soon." in notice.inner_text()
    assert axe_violations(carol) == [], "back soon"
    assert carol.js("() => window.omiro.reconnects.at(-1).reason") == "paused"
    assert carol.js("() => window.omiro.reconnects.at(-1).delayMs") >= 60_000
    chat_once(alice, bob, "still talking")
    chat_once(bob, alice, "yes")
    assert admin(server, "PUT", "/admin/raid", {"on": False}) == {"on": False}
    carol.testid("retry").click()
    carol.wait_state("waiting")


def test_gate_screen_fits_a_320px_phone_and_speaks_every_language(make_server, people):
    server = make_server(
        OMIRO_GATE_KIND="passphrase",
        OMIRO_GATE_PASSPHRASE_HASH=argon2.PasswordHasher().hash(PHRASE),
    )
    phone = people(server, "phone", viewport=SMALL_PHONE)
    phone.start()
    gate_shown(phone)
    box = phone.js(
        """() => {
          const r = (id) => document.querySelector(`[data-testid=${id}]`).getBoundingClientRect();
          return { input: r('gate-input').toJSON(), submit: r('gate-submit').toJSON(),
                   cancel: r('gate-cancel').toJSON(),
                   scroll: document.documentElement.scrollWidth };
        }"""
    )
    for name in ("input", "submit", "cancel"):
        rect = box[name]
        assert rect["left"] >= 0, (name, rect)
        assert rect["right"] <= SMALL_PHONE["width"], (name, rect)
        assert rect["bottom"] <= SMALL_PHONE["height"], (name, rect)
        assert rect["height"] >= 24, (name, rect)
    assert box["scroll"] <= SMALL_PHONE["width"]
    phone.testid("gate-input").fill(PHRASE)
    phone.testid("gate-submit").click()
    phone.wait(f"() => !{DIALOG}.open")
    # Every language: the screen and its errors in the page's words.
    for language in LANGUAGES:
        if language == "en":
            continue
        person = people(server, language, locale=BROWSER_LOCALE[language])
        person.start(text=True)
        gate_shown(person)
        person.testid("gate-input").fill("wrong")
        person.testid("gate-submit").click()
        person.wait("() => document.querySelector('[data-testid=gate-error]').textContent !== ''")
        assert english_leftovers(person, language) == [], language
