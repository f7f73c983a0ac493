// The text chat beside the call: the message list, the composer, the
// "Stranger is typing…" line, and the tab-title flash for unread messages.
//
// Invariants: text from the network is only ever put into the page with
// textContent, never parsed as HTML. A line of ours says "Sending…" until
// the server confirmed it took it, and "Not sent" if it never did: nothing
// is shown as sent that was not (DELIVERY_TEXT, from the message catalog).
//
// Screen readers: the log itself is not a live region. What is news to the
// user (a stranger's message, a line that the status line does not already
// say) is written once into a separate polite region, `announce`; a match or
// a departure is said by the status line alone, so it is heard once.

import { formatNumber, t } from "./i18n.js";

const TYPING_IDLE_MS = 3_000; // we stop "typing" after this long without a keystroke
const TYPING_STALE_MS = 8_000; // a partner's "typing" that was never cleared expires
const TYPING_RENEW_MS = 5_000; // while we keep typing, "true" again before it goes stale
const FLASH_INTERVAL_MS = 1_000;

export const DELIVERY_TEXT = Object.freeze({
  get sending() {
    return t("delivery.sending");
  },
  sent: "",
  get failed() {
    return t("delivery.failed");
  },
  get unknown() {
    return t("delivery.unknown");
  },
});

export class ChatView {
  #log;
  #input;
  #sendButton;
  #typing;
  #counter;
  #announce;
  #typingTimer = null;
  #maxLength = 1000;

  constructor({ log, input, sendButton, typing, counter, announce }) {
    this.#log = log;
    this.#announce = announce;
    this.#input = input;
    this.#sendButton = sendButton;
    this.#typing = typing;
    this.#counter = counter;
    input.addEventListener("input", () => this.#refresh());
  }

  get maxLength() {
    return this.#maxLength;
  }

  set maxLength(n) {
    if (Number.isInteger(n) && n > 0) {
      this.#maxLength = n;
      this.#input.maxLength = n;
      this.#refresh();
    }
  }

  /** The composer's text, trimmed, or "" if there is nothing sendable. */
  get draft() {
    const text = this.#input.value.trim();
    return text.length > 0 && text.length <= this.#maxLength ? text : "";
  }

  clearDraft() {
    this.#input.value = "";
    this.#refresh();
  }

  setEnabled(enabled, placeholder) {
    this.#input.disabled = !enabled;
    if (placeholder) this.#input.placeholder = placeholder;
    this.#refresh();
  }

  /** Focus the composer and, on a short screen, bring it into view. */
  focus() {
    if (this.#input.disabled) return;
    this.#input.focus({ preventScroll: true });
    // After this frame's layout, which may still move it.
    requestAnimationFrame(() => this.#input.scrollIntoView({ block: "nearest" }));
  }

  clear() {
    this.#log.replaceChildren();
    this.showTyping(false);
  }

  /** who: "you" or "stranger"; returns the line (for setDelivery). */
  addMessage(who, text, delivery = null) {
    const item = document.createElement("li");
    item.className = `msg msg-${who}`;
    const author = document.createElement("span");
    author.className = "msg-author";
    author.textContent = who === "you" ? t("chat.you") : t("chat.stranger");
    const body = document.createElement("span");
    body.className = "msg-text";
    body.dir = "auto"; // a message keeps its own direction in a page of the other
    body.textContent = text;
    item.append(author, body);
    if (delivery) this.setDelivery(item, delivery);
    this.#append(item);
    if (who === "stranger") this.say(t("chat.strangerSaid", { message: text }));
    return item;
  }

  /** Mark one of our lines "sending", "sent" or "failed" (never sent). */
  setDelivery(item, delivery) {
    item.dataset.delivery = delivery;
    let status = item.querySelector(".msg-status");
    if (!status) {
      status = document.createElement("span");
      status.className = "msg-status";
      item.append(status);
    }
    status.textContent = DELIVERY_TEXT[delivery];
    status.hidden = delivery === "sent";
  }

  /** Say our lines' delivery again in the page's (new) language. */
  retranslate() {
    for (const item of this.#log.querySelectorAll(".msg-you[data-delivery]")) {
      this.setDelivery(item, item.dataset.delivery);
    }
  }

  /**
   * A line from Omiro itself; tone: "info", "good" or "warn". `announce`:
   * also say it to screen readers (for news the status line does not say).
   */
  addSystem(text, tone = "info", { announce = false } = {}) {
    const item = document.createElement("li");
    item.className = `msg msg-system tone-${tone}`;
    item.textContent = text;
    this.#append(item);
    if (announce) this.say(text);
  }

  /** Say `text` once in the polite announcement region. */
  say(text) {
    if (!this.#announce) return;
    this.#announce.textContent = text;
  }

  showTyping(on) {
    clearTimeout(this.#typingTimer);
    this.#typingTimer = null;
    this.#typing.hidden = !on;
    if (on) this.#typingTimer = setTimeout(() => this.showTyping(false), TYPING_STALE_MS);
  }

  #append(item) {
    const log = this.#log;
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 48;
    log.append(item);
    if (atBottom || !item.classList.contains("msg-stranger")) log.scrollTop = log.scrollHeight;
  }

  #refresh() {
    const length = this.#input.value.trim().length;
    this.#sendButton.disabled = this.#input.disabled || length === 0 || length > this.#maxLength;
    const left = this.#maxLength - this.#input.value.length;
    const show = !this.#input.disabled && left < Math.min(100, this.#maxLength / 5);
    this.#counter.hidden = !show;
    this.#counter.textContent = show ? String(left) : "";
    // Grow with the text, up to the CSS max-height.
    this.#input.style.height = "auto";
    this.#input.style.height = `${this.#input.scrollHeight}px`;
  }
}

/**
 * Sends typing true on the first keystroke and false when the user pauses.
 * A long message typed without a pause sends true again every few seconds,
 * so the partner's page does not take it for a stale one.
 */
export class TypingReporter {
  #send;
  #typing = false;
  #timer = null;
  #sentAt = 0;

  constructor(send) {
    this.#send = send;
  }

  keystroke(hasText) {
    clearTimeout(this.#timer);
    if (!hasText) {
      this.stop();
      return;
    }
    const now = performance.now();
    if (!this.#typing || now - this.#sentAt >= TYPING_RENEW_MS) {
      this.#typing = true;
      this.#sentAt = now;
      this.#send(true);
    }
    this.#timer = setTimeout(() => this.stop(), TYPING_IDLE_MS);
  }

  stop() {
    clearTimeout(this.#timer);
    this.#timer = null;
    if (this.#typing) {
      this.#typing = false;
      this.#send(false);
    }
  }

  /** Forget state without telling anyone (the match is over). */
  reset() {
    clearTimeout(this.#timer);
    this.#timer = null;
    this.#typing = false;
  }
}

/** Alternates the tab title while the page is hidden and something happened. */
export class TitleFlasher {
  #base;
  #timer = null;
  #count = 0;

  constructor() {
    this.#base = document.title;
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) this.stop();
    });
  }

  /** The title to come back to (it follows the page's language). */
  set base(title) {
    this.#base = title;
    if (!this.#timer) document.title = title;
  }

  get unread() {
    return this.#count;
  }

  /** Call for each event; does nothing while the tab is visible. */
  notify(label) {
    if (!document.hidden) return;
    this.#count += 1;
    const text = this.#count > 1 ? `(${formatNumber(this.#count)}) ${label}` : label;
    clearInterval(this.#timer);
    let on = true;
    document.title = text;
    this.#timer = setInterval(() => {
      on = !on;
      document.title = on ? text : this.#base;
    }, FLASH_INTERVAL_MS);
  }

  stop() {
    clearInterval(this.#timer);
    this.#timer = null;
    this.#count = 0;
    document.title = this.#base;
  }
}
