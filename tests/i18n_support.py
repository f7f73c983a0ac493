"""The page's languages for the browser tests: the catalogs and a check for
English left on a page in another language (see test_languages.py)."""

from __future__ import annotations

import json
import re
from typing import Any

LANGUAGES = ("en", "es", "pt", "fr", "de", "ar")


def catalog(language: str) -> dict[str, Any]:
    """The message catalog the installed page serves for ``language``."""
    from omiro_trio.static import frontend_dir

    return json.loads((frontend_dir() / "locales" / f"{language}.json").read_text())


def _messages(messages: dict[str, Any]) -> list[str]:
    """Every message of a catalog, each plural form apart, without markup."""
    out: list[str] = []
    for value in messages.values():
        for text in value.values() if isinstance(value, dict) else [value]:
            out.append(re.sub(r"</?(strong|em|kbd)>", "", text))
    return out


def english_fragments(language: str) -> list[str]:
    """Pieces of the English messages (split at their parameters) that the
    ``language`` catalog does not also contain: seen on its page, they are
    English left untranslated."""
    theirs = "\n".join(_messages(catalog(language)))
    pieces: set[str] = set()
    for text in _messages(catalog("en")):
        for piece in re.split(r"\{\w+\}", text):
            piece = piece.strip(" .,:;·…()!?")
            if len(piece) >= 6 and " " in piece and piece not in theirs:
                pieces.add(piece)
    return sorted(pieces, key=len, reverse=True)


# Everything a person can see or hear on the page: rendered text, and the
# names and hints of elements (aria-label, title, placeholder). Left out:
# what people typed (messages, interests), the language picker (each
# language's own name), key caps, and device names.
PAGE_WORDS_JS = """
() => {
  const own = ".msg-you .msg-text, .msg-stranger .msg-text, .chip, .language, kbd, option";
  const shown = (el) => el.checkVisibility({ visibilityProperty: true, opacityProperty: false });
  const words = [document.title];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const el = node.parentElement;
    const text = node.textContent.trim();
    if (!text || !el || el.closest(own) || el.closest("svg") || !shown(el)) continue;
    words.push(text);
  }
  for (const el of document.body.querySelectorAll("[aria-label], [title], [placeholder]")) {
    if (el.closest(own) || !shown(el)) continue;
    for (const name of ["aria-label", "title", "placeholder"]) {
      const value = el.getAttribute(name);
      if (value) words.push(value);
    }
  }
  return words;
}
"""
ENGLISH_WORDS = re.compile(r"\b(the|you|your|you're|with|and|this|stranger|camera|please)\b", re.I)


def english_leftovers(person: Any, language: str) -> list[str]:
    """What the page shows in English although it is in ``language``."""
    if language == "en":
        return []
    fragments = english_fragments(language)
    found = []
    for words in person.js(PAGE_WORDS_JS):
        hits = [f for f in fragments if f in words]
        if hits or ENGLISH_WORDS.search(words):
            found.append(f"{words!r} ({hits[0] if hits else 'English words'})")
    return found
