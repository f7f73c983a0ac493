"""The page in every language: complete catalogs, the browser's language
followed, a picker that is remembered, plurals and numbers from Intl, and
Arabic mirrored.

The catalogs are ``frontend/locales/<code>.json``; English is the source.
"Untranslated" is caught twice: a key missing from a catalog fails
``test_catalogs_have_every_key_and_plural_form`` (and the page itself warns
``omiro: no "key" in the … catalog``, which fails any browser test), and a
page in another language that shows a piece of an English message, or
common English words, fails ``english_leftovers`` (run here and in every
axe state of ``test_accessibility.py``).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from i18n_support import LANGUAGES, catalog, english_leftovers

pytestmark = pytest.mark.browser

PLACEHOLDER = re.compile(r"\{(\w+)\}")
MARKUP = re.compile(r"<(strong|em|kbd)>")
BROWSER_LOCALE = {
    "en": "en-US",
    "es": "es-419",
    "pt": "pt-BR",
    "fr": "fr-FR",
    "de": "de-DE",
    "ar": "ar-EG",
}


def forms(value: Any) -> list[str]:
    return list(value.values()) if isinstance(value, dict) else [value]


def test_catalogs_have_every_key_and_plural_form(server, people):
    alice = people(server, "alice")
    # The languages the page offers are exactly the catalogs there are.
    offered = alice.js("() => [...document.getElementById('language').options].map(o => o.value)")
    assert offered == list(LANGUAGES)
    assert alice.js("() => window.omiro.languages") == list(LANGUAGES)
    english = catalog("en")
    for language in LANGUAGES:
        messages = catalog(language)
        assert set(messages) == set(english), (language, set(messages) ^ set(english))
        categories = set(
            alice.js("l => new Intl.PluralRules(l).resolvedOptions().pluralCategories", language)
        )
        for key, value in messages.items():
            source = english[key]
            # A plural in English is a plural everywhere, with every form the
            # language has (Arabic: zero, one, two, few, many, other).
            assert isinstance(value, dict) == isinstance(source, dict), (language, key)
            if isinstance(value, dict):
                assert categories <= set(value), (language, key, categories - set(value))
            wanted = set().union(*(set(PLACEHOLDER.findall(t)) for t in forms(source)))
            for text in forms(value):
                used = set(PLACEHOLDER.findall(text))
                # "{n}" may be spelled out ("one second"); every other parameter is used.
                assert used - {"n"} == wanted - {"n"}, (language, key, text)
                assert used <= wanted, (language, key, text)
                assert sorted(MARKUP.findall(text)) == sorted(MARKUP.findall(forms(source)[0])), (
                    language,
                    key,
                    text,
                )
            if language != "en":
                assert all(t.strip() for t in forms(value)), (language, key)


@pytest.mark.parametrize("language", LANGUAGES[1:])
def test_each_language_follows_the_browser_and_leaves_no_english(server, people, language):
    alice = people(server, "alice", locale=BROWSER_LOCALE[language])
    bob = people(server, "bob", locale="en-GB")
    messages = catalog(language)
    assert alice.js("() => document.documentElement.lang") == language
    assert alice.js("() => window.omiro.language") == language
    assert alice.js("() => document.documentElement.dataset.translating") is None
    assert alice.testid("start").inner_text().strip() == messages["action.start"]
    assert alice.page.title() == messages["page.title"]
    assert english_leftovers(alice, language) == [], "idle"

    alice.start()
    alice.wait_state("waiting")
    assert alice.testid("status").inner_text() == messages["status.waiting"]
    assert english_leftovers(alice, language) == [], "waiting"

    bob.start()
    for person in (alice, bob):
        person.wait_state("connected")
    alice.wait("() => document.body.dataset.media === 'playing'")
    bob.testid("chat-input").fill("hello from London")
    bob.page.keyboard.press("Enter")
    alice.wait("() => document.querySelectorAll('.msg-stranger').length === 1")
    # The Next button is called Next in the language, its key in aria-keyshortcuts.
    next_button = alice.page.get_by_role("button", name=messages["action.next"], exact=True)
    assert next_button.count() == 1
    assert next_button.get_attribute("aria-keyshortcuts") == "Escape"
    assert english_leftovers(alice, language) == [], "video call"
    # The stranger's words stay as they were written.
    assert alice.chat_entries()[-1]["text"] == "hello from London"

    alice.testid("report").click()
    alice.wait("() => document.getElementById('report-dialog').open")
    assert english_leftovers(alice, language) == [], "report dialog"
    alice.testid("report-cancel").click()

    alice.testid("open-notice").click()
    alice.wait("() => document.getElementById('welcome').open")
    assert english_leftovers(alice, language) == [], "rules and safety"
    alice.testid("notice-accept").click()

    bob.testid("stop").click()
    alice.wait_state("waiting")
    assert alice.testid("status").inner_text() == messages["status.partnerLeft"]
    assert english_leftovers(alice, language) == [], "partner left"


def test_picker_switches_at_once_and_is_remembered(server, people):
    alice = people(server, "alice", locale="en-US")
    assert alice.js("() => window.omiro.language") == "en"
    picker = alice.testid("language")
    assert picker.is_visible()
    alice.start()
    alice.wait_state("waiting")
    # During a search: everything on screen changes, nothing is lost.
    picker.select_option("pt")
    pt = catalog("pt")
    alice.wait(
        "s => document.querySelector('[data-testid=status]').textContent === s",
        pt["status.waiting"],
    )
    assert alice.js("() => [document.documentElement.lang, document.documentElement.dir]") == [
        "pt",
        "ltr",
    ]
    assert alice.testid("next").inner_text().strip().startswith(pt["action.next"])
    assert alice.testid("stop").inner_text().strip() == pt["action.stop"]
    assert alice.js("() => document.getElementById('language-name').textContent") == "Português"
    assert alice.state == "waiting"
    assert english_leftovers(alice, "pt") == []
    # Remembered on this device, over the browser's own preference.
    alice.page.reload()
    alice.page.wait_for_function("() => window.omiro !== undefined")
    assert alice.js("() => window.omiro.language") == "pt"
    # The words come in once the catalog is (window.omiro may be there before).
    alice.wait(
        "s => document.querySelector('[data-testid=start]').innerText.trim() === s",
        pt["action.start"],
    )
    # And back to Arabic, right to left.
    alice.testid("language").select_option("ar")
    alice.wait("() => document.documentElement.dir === 'rtl'")
    assert alice.testid("start").inner_text().strip() == catalog("ar")["action.start"]


def test_plurals_and_numbers_follow_the_language(server, people):
    alice = people(server, "alice", locale="ar-EG")
    bob = people(server, "bob")
    carol = people(server, "carol")
    # Nobody connected: the reader alone, never "0".
    ar = catalog("ar")
    alice.wait(
        "s => document.querySelector('.online-text').textContent === s", ar["online.justYou"]
    )
    bob.start()
    carol.start()
    bob.wait_state("connected")
    alice.js("() => document.dispatchEvent(new Event('visibilitychange'))")
    # Two connected, plus the reader: three, in Arabic digits and the "few" form.
    three = alice.js("() => new Intl.NumberFormat('ar').format(3)")
    alice.wait(
        "s => document.querySelector('.online-text').textContent === s",
        ar["online.people"]["few"].replace("{n}", three),
    )
    alice.testid("language").select_option("de")
    alice.wait("() => document.querySelector('.online-text').textContent === '3 Personen hier'")


def test_arabic_mirrors_the_layout(server, people):
    boxes = {}
    for language in ("en", "ar"):
        person = people(server, f"{language}-1", locale=language)
        other = people(server, f"{language}-2")
        person.start()
        other.start()
        person.wait_state("connected")
        person.wait("() => document.body.dataset.media === 'playing'")
        boxes[language] = person.js(
            """() => {
              const box = (s) => { const r = document.querySelector(s).getBoundingClientRect();
                                   return [r.left, r.right, r.top, r.bottom]; };
              return { width: innerWidth, dir: document.documentElement.dir,
                       stage: box('.stage'), chat: box('.chat'), pip: box('.pip'),
                       mute: box('#mute'), brand: box('.brand'), send: box('#chat-send'),
                       next: box('#next'), stop: box('#stop') };
            }"""
        )
        person.testid("stop").click()
        other.testid("stop").click()
    en, ar = boxes["en"], boxes["ar"]
    assert (en["dir"], ar["dir"]) == ("ltr", "rtl")
    width = en["width"]
    for name in ("stage", "chat", "pip", "mute", "brand", "send"):
        left, right, top, bottom = en[name]
        mirrored = [width - right, width - left, top, bottom]
        assert all(abs(a - b) <= 2 for a, b in zip(ar[name], mirrored, strict=True)), (
            name,
            en[name],
            ar[name],
        )
    # The chat is on the other side of the stranger, and Next leads from the right.
    assert en["chat"][0] > en["stage"][1]
    assert ar["chat"][1] < ar["stage"][0]
    assert en["next"][0] < en["stop"][0]
    assert ar["next"][0] > ar["stop"][0]


@pytest.mark.rule("protocol/languages")
def test_two_pages_with_a_shared_language_are_matched_before_others(server, people):
    """A German page waits longest; a Brazilian page and a Spanish one whose user also
    speaks Portuguese come after it: they meet each other, and are told what they
    share. The German is not left out: after the
    short wait (matchmaking.interest_timeout_s) it meets anyone."""
    german = people(server, "german", locale="de-DE")
    first = people(server, "first", locale="pt-BR")
    # A page in Spanish whose user also speaks Portuguese.
    second = people(server, "second", locale="es-419")
    second.testid("speaks-add").select_option("pt")
    assert german.js("() => window.omiro.speaks") == ["de"]
    assert first.js("() => window.omiro.speaks") == ["pt"]
    assert second.js("() => window.omiro.speaks") == ["es", "pt"]
    german.start()
    german.wait_state("waiting")
    first.start()
    first.wait_state("waiting")
    second.start()
    for person in (first, second):
        person.wait_state("connected")
    assert second.partner_id == first.session_id
    assert german.state == "waiting"
    assert first.js("() => window.omiro.commonLanguages") == ["pt"]
    # The Spanish page is told, in Spanish; the Portuguese one hears no news.
    said = catalog("es")["system.commonLanguages"].replace("{list}", "portugués")
    second.wait(
        "s => [...document.querySelectorAll('.msg-system')].some(m => m.textContent === s)", said
    )
    assert "falam" not in first.testid("chat-log").inner_text()
    # Never a filter: an English page that comes later meets the German one
    # once their short wait is over (5 s by default; waited for, not slept).
    english = people(server, "english", locale="en-US")
    english.start()
    for person in (german, english):
        person.wait_state("connected", timeout_ms=20_000)
    assert english.partner_id == german.session_id
    assert german.js("() => window.omiro.commonLanguages") == []


def test_the_languages_spoken_start_from_the_page_and_can_be_changed(server, people):
    alice = people(server, "alice", locale="en-US")
    assert alice.js("() => window.omiro.speaks") == ["en"]
    # Not chosen yet: they follow the page's language.
    alice.testid("language").select_option("pt")
    alice.wait("() => window.omiro.speaks.join() === 'pt'")
    chips = alice.testid("speaks")
    assert chips.inner_text().strip().startswith("português")
    # One more from the picker (names in the page's language), then sent.
    alice.testid("speaks-add").select_option("en")
    assert alice.js("() => window.omiro.speaks") == ["pt", "en"]
    alice.start()
    alice.wait_state("waiting")
    assert alice.js("() => window.omiro.prefs.languages") == ["pt", "en"]
    # Remembered, and no longer following the page.
    alice.testid("stop").click()
    alice.page.reload()
    alice.page.wait_for_function("() => window.omiro !== undefined")
    assert alice.js("() => window.omiro.speaks") == ["pt", "en"]
    alice.testid("language").select_option("de")
    alice.wait("() => document.documentElement.lang === 'de'")
    assert alice.js("() => window.omiro.speaks") == ["pt", "en"]
    remove = alice.page.get_by_role(
        "button", name=catalog("de")["speaks.remove"].replace("{language}", "Englisch")
    )
    remove.click()
    assert alice.js("() => window.omiro.speaks") == ["pt"]
    # At most five, as the server accepts.
    for code in ("es", "fr", "ar", "it", "ja"):
        if not alice.testid("speaks-add").is_disabled():
            alice.testid("speaks-add").select_option(code)
    assert len(alice.js("() => window.omiro.speaks")) == 5
    assert alice.testid("speaks-add").is_disabled()
