// The first-visit notice (18+, the rules, reports and bans, what the camera
// is for) and the page's two settings that live beside it.
//
// The server renders the notice's text (the operator may replace it) and
// stamps it with a version; accepting it stores that version, so the notice
// shows once per browser and again only when the operator changes it.
// Nothing can be started before it was accepted.

const NOTICE_KEY = "omiro.notice";
const SHORTCUTS_KEY = "omiro.shortcuts";

function load(key) {
  try {
    return localStorage.getItem(key);
  } catch {
    return null; // storage blocked: ask every visit
  }
}

function store(key, value) {
  try {
    localStorage.setItem(key, value);
  } catch {
    /* private mode: not remembered */
  }
}

export class SafetyNotice extends EventTarget {
  #dialog;
  #shortcuts;
  #version;
  #accepted;

  constructor({ dialog, shortcuts }) {
    super();
    this.#dialog = dialog;
    this.#shortcuts = shortcuts;
    this.#version = dialog.dataset.noticeVersion || "1";
    this.#accepted = load(NOTICE_KEY) === this.#version;
    shortcuts.checked = load(SHORTCUTS_KEY) !== "off";
    shortcuts.addEventListener("change", () => store(SHORTCUTS_KEY, shortcuts.checked ? "on" : "off"));
    dialog.addEventListener("close", () => {
      if (dialog.returnValue === "accept") {
        this.#accepted = true;
        store(NOTICE_KEY, this.#version);
      }
      this.dispatchEvent(new CustomEvent("closed", { detail: { accepted: this.#accepted } }));
    });
  }

  /** Whether this browser accepted the current notice. */
  get accepted() {
    return this.#accepted;
  }

  /** Whether single-key shortcuts (M, V) are on. */
  get shortcuts() {
    return this.#shortcuts.checked;
  }

  get open() {
    return this.#dialog.open;
  }

  show() {
    if (this.#dialog.open) return;
    this.#dialog.returnValue = "";
    this.#dialog.showModal();
  }
}
