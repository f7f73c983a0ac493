// The languages the user speaks, stated in `join_queue` (PROTOCOL.md,
// "Languages"): the server matches them like interests, a preference and
// never a filter.
//
// * Until the user changes them, they are the page's language (and follow
//   it when the picker changes it); once changed, they are remembered in
//   localStorage and no longer follow.
// * Codes are ISO 639 (the first subtag of a language tag: "pt" for
//   "pt-BR"), at most MAX_LANGUAGES, as the server accepts them.
// * Each is shown by its name in the page's language (Intl.DisplayNames);
//   one more is added from a native <select> (the phone's own picker),
//   which offers the browser's preferred languages first.

import { currentLanguage, t } from "./i18n.js";

export const MAX_LANGUAGES = 5;
const STORAGE_KEY = "omiro.speaks";
// Widely spoken languages offered in the picker, after the browser's own.
const OFFERED = [
  "ar", "bn", "de", "el", "en", "es", "fa", "fr", "he", "hi", "id", "it", "ja", "ko", "ms",
  "nl", "pl", "pt", "ro", "ru", "sv", "sw", "th", "tl", "tr", "uk", "ur", "vi", "zh",
];

/** The ISO 639 code of a language tag ("pt-BR" gives "pt"), or null. */
export function languageCode(tag) {
  const code = String(tag).split(/[-_]/)[0].toLowerCase();
  return /^[a-z]{2,3}$/.test(code) ? code : null;
}

export class SpokenLanguages extends EventTarget {
  #chips;
  #add;
  #codes = [];
  #chosen = false; // the user changed them: remembered, and no longer follow the page
  #disabled = false;

  constructor({ chips, add }) {
    super();
    this.#chips = chips;
    this.#add = add;
    try {
      const saved = JSON.parse(localStorage.getItem(STORAGE_KEY) ?? "null");
      if (Array.isArray(saved)) {
        this.#codes = [...new Set(saved.map(languageCode).filter(Boolean))].slice(0, MAX_LANGUAGES);
        this.#chosen = true;
      }
    } catch {
      /* unreadable storage: the page's language */
    }
    if (!this.#chosen) this.#codes = [languageCode(currentLanguage()) ?? "en"];
    add.addEventListener("change", () => {
      const code = languageCode(add.value);
      add.value = "";
      if (!code || this.#codes.includes(code) || this.#codes.length >= MAX_LANGUAGES) return;
      this.#codes.push(code);
      this.#changed();
    });
    this.render();
  }

  /** The codes to state in `join_queue`. */
  get codes() {
    return [...this.#codes];
  }

  set disabled(value) {
    this.#disabled = value;
    this.render();
  }

  /** The page's language changed: follow it unless the user chose, then draw again. */
  pageLanguageChanged() {
    if (!this.#chosen) {
      const code = languageCode(currentLanguage());
      const changed = code !== null && this.#codes.join() !== code;
      if (code) this.#codes = [code];
      if (changed) this.dispatchEvent(new Event("change"));
    }
    this.render();
  }

  #remove(index) {
    this.#codes.splice(index, 1);
    this.#changed();
  }

  #changed() {
    this.#chosen = true;
    try {
      localStorage.setItem(STORAGE_KEY, JSON.stringify(this.#codes));
    } catch {
      /* private mode: not remembered */
    }
    this.render();
    this.dispatchEvent(new Event("change"));
  }

  render() {
    const names = displayNames();
    const name = (code) => names?.of(code) ?? code;
    const items = this.#codes.map((code, index) => {
      const li = document.createElement("li");
      li.className = "chip";
      li.lang = currentLanguage();
      const label = document.createElement("span");
      label.textContent = name(code);
      li.append(label);
      if (!this.#disabled) {
        const remove = document.createElement("button");
        remove.type = "button";
        remove.className = "chip-remove";
        remove.setAttribute("aria-label", t("speaks.remove", { language: name(code) }));
        remove.textContent = "×";
        remove.addEventListener("click", () => this.#remove(index));
        li.append(remove);
      }
      return li;
    });
    this.#chips.replaceChildren(...items);
    const first = document.createElement("option");
    first.value = "";
    first.textContent = t("speaks.add");
    const browser = (navigator.languages ?? []).map(languageCode).filter(Boolean);
    const collator = new Intl.Collator(currentLanguage());
    const rest = OFFERED.filter((code) => !browser.includes(code)).sort((a, b) =>
      collator.compare(name(a), name(b)),
    );
    const options = [...new Set([...browser, ...rest])]
      .filter((code) => !this.#codes.includes(code))
      .map((code) => {
        const option = document.createElement("option");
        option.value = code;
        option.textContent = name(code);
        return option;
      });
    this.#add.replaceChildren(first, ...options);
    this.#add.disabled = this.#disabled || this.#codes.length >= MAX_LANGUAGES;
  }
}

function displayNames() {
  try {
    return new Intl.DisplayNames([currentLanguage()], { type: "language" });
  } catch {
    return null;
  }
}
