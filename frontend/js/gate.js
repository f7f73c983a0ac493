// The entry gate's screens (docs/gate.md, docs/protocol.md "Entry gate").
//
// When `session/new` answers `{"error": "gate"}`, the page shows the kind's
// screen in one modal dialog: the passphrase, an invite code, or a refusal
// that says why. What a person types goes to `POST gate/<kind>`; the server
// answers 204 with the gate pass (an HttpOnly cookie the page never reads),
// and the page starts again. An invite link (`?invite=CODE`) is taken off
// the address bar at once (so it is not bookmarked or shared further by
// accident) and sent by itself the first time the gate asks for it.
//
// Accessibility: the dialog is modal (focus moves in, Esc closes it), the
// field has a visible label, and an error is said by the live region
// `gate-error` (role="alert") and tied to the field (aria-describedby,
// aria-invalid), with the focus back in the field.
//
// Events: "admitted" (the pass is set: start again), "dismissed" (closed
// without getting in).

import { t } from "./i18n.js";

const ENTRY_DEADLINE_MS = 10_000;

const REASON_KEYS = {
  wrong: "gate.wrong",
  unknown: "gate.unknown",
  expired: "gate.expired",
  used_up: "gate.usedUp",
  not_allowed: "gate.notAllowed",
  too_young: "gate.tooYoung",
};

const SCREENS = {
  passphrase: {
    title: "gate.passphraseTitle",
    text: "gate.passphraseText",
    label: "gate.passphraseLabel",
    field: "passphrase",
    input: "password",
  },
  invite: {
    title: "gate.inviteTitle",
    text: "gate.inviteText",
    label: "gate.inviteLabel",
    field: "code",
    input: "text",
  },
};

/** The invite code of the page's address (`?invite=CODE`), taken off the address bar. */
export function takeInviteCode(location = window.location, history = window.history) {
  const url = new URL(location.href);
  const code = url.searchParams.get("invite");
  if (code === null) return null;
  url.searchParams.delete("invite");
  try {
    history.replaceState(history.state, "", url.pathname + url.search + url.hash);
  } catch {
    /* a sandboxed page: the address keeps it */
  }
  return code.trim().slice(0, 256) || null;
}

export class EntryGate extends EventTarget {
  #dialog;
  #form;
  #title;
  #text;
  #field;
  #label;
  #input;
  #error;
  #cancel;
  #submit;
  #base;
  #kind = null; // the screen shown: a kind, or "refused"
  #reason = null; // the refusal or error shown, as a catalog key
  #pendingCode;
  #sending = false;
  #admitted = false;

  constructor({ dialog, base = document.baseURI, inviteCode = null }) {
    super();
    const $ = (id) => dialog.querySelector(`#${id}`);
    this.#dialog = dialog;
    this.#form = $("gate-form");
    this.#title = $("gate-title");
    this.#text = $("gate-text");
    this.#field = $("gate-field");
    this.#label = $("gate-label");
    this.#input = $("gate-input");
    this.#error = $("gate-error");
    this.#cancel = $("gate-cancel");
    this.#submit = $("gate-submit");
    this.#base = base;
    this.#pendingCode = inviteCode;
    this.#form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.#send(this.#input.value);
    });
    this.#cancel.addEventListener("click", () => dialog.close("cancel"));
    dialog.addEventListener("close", () => {
      if (!this.#admitted) this.dispatchEvent(new CustomEvent("dismissed"));
      this.#admitted = false;
    });
  }

  get open() {
    return this.#dialog.open;
  }

  /**
   * `session/new` answered `{"error": "gate", gate, reason}`: show the kind's
   * screen, or send the invite code of the link first if there is one.
   */
  ask({ gate, reason }) {
    if (reason === "required" && gate === "invite" && this.#pendingCode) {
      const code = this.#pendingCode;
      this.#pendingCode = null;
      this.#show("invite", null);
      this.#input.value = code;
      this.#send(code);
      return;
    }
    if (reason === "required" && SCREENS[gate]) this.#show(gate, null);
    else if (SCREENS[gate] && REASON_KEYS[reason] && gate !== "oidc") this.#show(gate, REASON_KEYS[reason]);
    else this.#show("refused", REASON_KEYS[reason] ?? null);
  }

  /** Draw the words again (the page's language changed). */
  render() {
    if (this.#kind === null) return;
    const screen = SCREENS[this.#kind];
    this.#title.textContent = t(screen ? screen.title : "gate.refusedTitle");
    this.#text.textContent = t(screen ? screen.text : "gate.refusedText");
    this.#field.hidden = !screen;
    this.#submit.hidden = !screen;
    if (screen) {
      this.#label.textContent = t(screen.label);
      this.#submit.textContent = t("gate.enter");
    }
    this.#cancel.textContent = t(screen ? "gate.cancel" : "gate.close");
    this.#error.textContent = this.#reason ? t(this.#reason) : "";
    if (this.#reason) this.#input.setAttribute("aria-invalid", "true");
    else this.#input.removeAttribute("aria-invalid");
  }

  #show(kind, reason) {
    const changed = this.#kind !== kind;
    this.#kind = kind;
    this.#reason = reason;
    const screen = SCREENS[kind];
    if (screen) {
      this.#input.type = screen.input;
      this.#input.autocomplete = screen.input === "password" ? "current-password" : "off";
      if (changed) this.#input.value = "";
    }
    this.render();
    if (!this.#dialog.open) this.#dialog.showModal();
    (screen ? this.#input : this.#cancel).focus();
  }

  #fail(key) {
    this.#reason = key;
    this.render();
    this.#input.focus();
    this.#input.select();
  }

  async #send(value) {
    const screen = SCREENS[this.#kind];
    if (!screen || this.#sending) return;
    const text = value.trim();
    if (!text) {
      this.#fail("gate.empty");
      return;
    }
    this.#sending = true;
    this.#submit.disabled = true;
    this.#error.textContent = "";
    let response;
    let body = {};
    try {
      response = await fetch(new URL(`gate/${this.#kind}`, this.#base), {
        method: "POST",
        cache: "no-store",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ [screen.field]: text }),
        signal: AbortSignal.timeout(ENTRY_DEADLINE_MS),
      });
      if (response.status !== 204) body = await response.json().catch(() => ({}));
    } catch {
      response = null;
    } finally {
      this.#sending = false;
      this.#submit.disabled = false;
    }
    if (response?.status === 204) {
      this.#admitted = true;
      this.#reason = null;
      this.#input.value = "";
      this.#dialog.close("admitted");
      this.dispatchEvent(new CustomEvent("admitted", { detail: { kind: this.#kind } }));
      return;
    }
    if (response?.status === 429) this.#fail("gate.tooMany");
    else if (response?.status === 403 && body.error === "gate") this.#fail(REASON_KEYS[body.reason] ?? "gate.refusedText");
    else if (response?.status === 400) this.#fail(this.#kind === "invite" ? "gate.unknown" : "gate.wrong");
    else this.#fail("gate.failed");
  }
}
