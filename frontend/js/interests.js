// The interests (tags) field: chips plus a text input.
//
// Tags follow the protocol's limits (at most MAX_TAGS, each at most
// MAX_TAG_CHARS characters), are lower-cased and de-duplicated, and are
// remembered in localStorage between visits.

import { t } from "./i18n.js";

export const MAX_TAGS = 10;
export const MAX_TAG_CHARS = 32;
const STORAGE_KEY = "omiro.interests";

export function normalizeTag(raw) {
  return String(raw)
    .replace(/^#+/, "")
    .replace(/\s+/g, " ")
    .trim()
    .toLowerCase()
    .slice(0, MAX_TAG_CHARS)
    .trim();
}

export class InterestsField extends EventTarget {
  #input;
  #chips;
  #tags = [];
  #disabled = false;

  constructor({ input, chips }) {
    super();
    this.#input = input;
    this.#chips = chips;
    try {
      const saved = JSON.parse(localStorage.getItem(STORAGE_KEY) ?? "[]");
      if (Array.isArray(saved)) this.#add(saved);
    } catch {
      /* unreadable storage: start empty */
    }
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === ",") {
        event.preventDefault();
        event.stopPropagation();
        this.commit();
      } else if (event.key === "Backspace" && input.value === "" && this.#tags.length) {
        this.#remove(this.#tags.length - 1);
      }
    });
    input.addEventListener("input", () => {
      if (input.value.includes(",")) this.commit();
    });
    input.addEventListener("blur", () => this.commit());
    this.#render();
  }

  /** Current tags, including any text still typed in the input. */
  get tags() {
    this.commit();
    return [...this.#tags];
  }

  /** Draw again (the page's language changed). */
  render() {
    this.#render();
  }

  set disabled(value) {
    this.#disabled = value;
    this.#input.disabled = value;
    this.#render();
  }

  /** Turn whatever is typed (comma separated) into chips. */
  commit() {
    const pieces = this.#input.value.split(",");
    if (pieces.every((piece) => piece.trim() === "")) {
      this.#input.value = "";
      return;
    }
    this.#input.value = "";
    this.#add(pieces);
  }

  #add(values) {
    let changed = false;
    for (const value of values) {
      const tag = normalizeTag(value);
      if (!tag || this.#tags.includes(tag) || this.#tags.length >= MAX_TAGS) continue;
      this.#tags.push(tag);
      changed = true;
    }
    if (changed) this.#changed();
  }

  #remove(index) {
    this.#tags.splice(index, 1);
    this.#changed();
  }

  #changed() {
    try {
      localStorage.setItem(STORAGE_KEY, JSON.stringify(this.#tags));
    } catch {
      /* private mode: not remembered */
    }
    this.#render();
    this.dispatchEvent(new Event("change"));
  }

  #render() {
    const items = this.#tags.map((tag, index) => {
      const li = document.createElement("li");
      li.className = "chip";
      const label = document.createElement("span");
      label.textContent = tag;
      label.dir = "auto";
      li.append(label);
      if (!this.#disabled) {
        const remove = document.createElement("button");
        remove.type = "button";
        remove.className = "chip-remove";
        remove.setAttribute("aria-label", t("interests.remove", { tag }));
        remove.textContent = "×";
        remove.addEventListener("click", () => this.#remove(index));
        li.append(remove);
      }
      return li;
    });
    this.#chips.replaceChildren(...items);
    this.#input.placeholder =
      this.#tags.length >= MAX_TAGS
        ? ""
        : t(this.#tags.length ? "interests.more" : "interests.placeholder");
  }
}
