// The session and its WebSocket to the Omiro server (PROTOCOL.md, version 1).
//
// Invariants:
// * Every connection attempt fetches a fresh token from `session/new`: a
//   token whose session is already connected, or has expired, is refused by
//   the server, so reusing one after a drop would only fail.
// * While `wanted` is true a lost socket is reopened after a jittered,
//   exponentially growing delay (reset by a `hello`); `server_draining`
//   replaces the backoff with the server's own delay plus jitter, so a
//   restarting server is not hit by every client in the same millisecond.
// * Being banned (403 from `session/new`, close code 1008, or an `error`
//   with code `banned`) ends the wish to be connected: nothing retries.
// * Liveness (docs/protocol.md, "Liveness of a call"): after `hello` the
//   socket beats `alive` every `hello.liveness.alive_ms`; nothing heard from
//   the server for `unstable_ms` is "unstable", and for `lost_ms` the socket
//   is given up (it may never close by itself) and reconnected ("silent").
//   Every wait has a deadline: `session/new` SESSION_DEADLINE_MS, the
//   upgrade until `hello` HELLO_DEADLINE_MS.
// * Proof of work (pow.js): each `session/new` brings the solution prepared
//   in the background, if the server asks for one; answered `pow` (none, or
//   a used, expired or too easy one), a new challenge is solved and the
//   request made again at once, POW_TRIES times in all, before backing off.
// * URLs are relative to the page (document.baseURI), so Omiro works behind a
//   reverse proxy under a path prefix; the WebSocket URL is absolute because
//   the WebSocket constructor needs ws:// or wss://.
// * The token travels as a WebSocket subprotocol, never in the URL, so a
//   reverse proxy's access log does not keep it.
//
// Events (all CustomEvent, details in `event.detail`):
//   ready         {hello}                   hello received; send() works now
//   message       {op, data}                any other server message
//   reconnecting  {reason, delayMs, attempt} a new attempt is scheduled; reason is
//                 draining, lost, silent, unreachable, rate_limited, paused or server_error
//   unstable      {silentMs}                nothing heard from the server for unstable_ms
//   steady        {}                        heard again after "unstable"
//   banned        {message, until}          until: unix seconds or null
//   gate          {gate, reason, message}   the entry gate asks for something, or
//                                           refused; nothing retries
//   (raid mode: "reconnecting" with reason "paused", after the server's Retry-After)
//   closed        {code}                    socket closed and no retry follows

import { CloseCode, ErrorCode } from "./constants.js";
import { livenessOf } from "./liveness.js";

const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 15_000;
const DRAIN_JITTER_MIN_MS = 1_000;
const SESSION_DEADLINE_MS = 10_000;
const HELLO_DEADLINE_MS = 10_000;
const WATCH_MS = 500;
const POW_TRIES = 3;
const POW_ERROR = "pow"; // docs/protocol.md, "Proof of work"

/** Full-range jitter on an exponential step, never less than half the step. */
export function backoffDelayMs(attempt, random = Math.random) {
  const step = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** Math.min(attempt, 16));
  return Math.round(step / 2 + random() * (step / 2));
}

/** The server asked for `afterMs`; spread the herd over up to as long again. */
export function drainDelayMs(afterMs, random = Math.random) {
  const base = Math.max(0, Number(afterMs) || 0);
  return Math.round(base + random() * Math.max(DRAIN_JITTER_MIN_MS, base));
}

/** `ws://…/ws` next to the page, keeping any path prefix (the token is not in it). */
export function webSocketUrl(base = document.baseURI) {
  const url = new URL("ws", base);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.hash = "";
  url.search = "";
  return url.href;
}

export const SUBPROTOCOL = "omiro";

/**
 * The subprotocols to offer: `omiro`, which the server echoes, and the token
 * as `omiro.token.…` with its colons written as dots (PROTOCOL.md, "Where the
 * token goes"). Proxies log the URL, not this header.
 */
export function subprotocols(token) {
  return [SUBPROTOCOL, `omiro.token.${token.replaceAll(":", ".")}`];
}

export class Signaling extends EventTarget {
  #ws = null;
  #hello = null;
  #timer = null;
  #attempt = 0;
  #connecting = false;
  #drainDelay = null;
  #wanted = false;
  #base;
  #bounds = livenessOf(null);
  #beatTimer = null; // the interval that beats and watches the current socket
  #lastBeatAt = 0;
  #lastHeardAt = 0;
  #unstable = false;
  #helloDeadline = null;
  #beatsSent = 0; // on the current socket
  #beatsAnswered = 0;
  #waiters = []; // {beat, resolve, reject}: frames waiting for the server to confirm
  #pow; // pow.js ProofOfWork, or null

  constructor({ base = document.baseURI, pow = null } = {}) {
    super();
    this.#base = base;
    this.#pow = pow;
  }

  /** True once `hello` arrived on the current socket. */
  get ready() {
    return this.#hello !== null && this.#ws?.readyState === WebSocket.OPEN;
  }

  get hello() {
    return this.#hello;
  }

  get sessionId() {
    return this.#hello?.session_id ?? null;
  }

  /** Start (or keep) being connected; a no-op when already on the way. */
  open() {
    this.#wanted = true;
    if (this.#ws || this.#connecting || this.#timer) return;
    this.#connect();
  }

  /** Reconnect now instead of waiting out a scheduled delay. */
  retryNow() {
    if (!this.#wanted || !this.#timer) return;
    clearTimeout(this.#timer);
    this.#timer = null;
    this.#connect();
  }

  /** The liveness bounds the server announced (or the defaults). */
  get liveness() {
    return this.#bounds;
  }

  /** Milliseconds since anything came from the server on the current socket (0 if none is open). */
  get silentMs() {
    return this.ready ? Math.round(performance.now() - this.#lastHeardAt) : 0;
  }

  /** True while nothing has been heard from the server for `unstable_ms`. */
  get unstable() {
    return this.#unstable;
  }

  /** Leave for good: tell the server, close, and stop any retry. */
  close() {
    this.#wanted = false;
    clearTimeout(this.#timer);
    this.#timer = null;
    this.#stopWatch();
    const ws = this.#ws;
    if (!ws) return;
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ op: "disconnect", data: {} }));
    ws.close(CloseCode.NORMAL, "bye");
  }

  /**
   * Send one envelope and learn whether the server took it: resolves once the
   * server answered a beat sent right behind it (so it read and handled the
   * frame), rejects if the socket is lost first. Returns null when not ready.
   */
  sendConfirmed(op, data = {}) {
    if (!this.send(op, data)) return null;
    this.#beat();
    const beat = this.#beatsSent;
    return new Promise((resolve, reject) => this.#waiters.push({ beat, resolve, reject }));
  }

  /** Send one envelope; returns false (and sends nothing) when not ready. */
  send(op, data = {}) {
    if (!this.ready) return false;
    this.#ws.send(JSON.stringify({ op, data }));
    return true;
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  #schedule(reason, delayMs) {
    if (!this.#wanted) return;
    clearTimeout(this.#timer);
    const attempt = this.#attempt;
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#connect();
    }, delayMs);
    this.#emit("reconnecting", { reason, delayMs, attempt });
  }

  #backoff(reason) {
    const delay = backoffDelayMs(this.#attempt);
    this.#attempt += 1;
    this.#schedule(reason, delay);
  }

  async #connect() {
    if (!this.#wanted || this.#ws || this.#connecting) return;
    this.#connecting = true;
    let session;
    try {
      session = await this.#newSession();
    } finally {
      this.#connecting = false;
    }
    if (!session || !this.#wanted) return;
    this.#openSocket(session.token);
  }

  /** GET session/new; returns the session, or null after handling the failure. */
  async #newSession() {
    let response;
    let body;
    for (let tries = 1; ; tries++) {
      const payload = this.#pow ? await this.#pow.take() : null;
      const headers = { Accept: "application/json" };
      if (payload) headers["X-Omiro-Pow"] = payload;
      try {
        response = await fetch(new URL("session/new", this.#base), {
          cache: "no-store",
          credentials: "same-origin",
          headers,
          signal: AbortSignal.timeout(SESSION_DEADLINE_MS),
        });
      } catch {
        this.#backoff("unreachable");
        return null;
      }
      body = await response.json().catch(() => ({})); // (the deadline covers the body)
      if (body.error !== POW_ERROR || !this.#pow || tries >= POW_TRIES) break;
      this.#pow.reset();
    }
    if (response.status === 403 && body.error === ErrorCode.BANNED) {
      this.#wanted = false;
      this.#emit("banned", { message: body.message ?? "", until: body.until ?? null });
      return null;
    }
    if ((response.status === 401 || response.status === 403) && body.error === "gate") {
      // The entry gate (docs/protocol.md, "Entry gate"): nothing retries until
      // the page has shown the gate's screen and the person got in.
      this.#wanted = false;
      this.#emit("gate", { gate: String(body.gate ?? ""), reason: String(body.reason ?? ""), message: body.message ?? "" });
      return null;
    }
    if (response.status === 503 && body.error === "paused") {
      // Raid mode: back soon. Retry when told, spread over a few seconds more.
      const header = Number(response.headers.get("Retry-After"));
      const seconds = Number(body.retry_after) || header || 60;
      this.#schedule("paused", Math.round(seconds * 1000 + Math.random() * 5000));
      return null;
    }
    if (response.status === 429) {
      const header = Number(response.headers.get("Retry-After"));
      const seconds = Number(body.retry_after) || header || 5;
      // Jitter upwards only: retrying before retry_after would just be refused.
      const delay = Math.round(seconds * 1000 + Math.random() * 1000);
      this.#emit("rate_limited", { retryAfterS: seconds, delayMs: delay });
      this.#schedule("rate_limited", delay);
      return null;
    }
    if (!response.ok || typeof body.token !== "string") {
      this.#backoff("server_error");
      return null;
    }
    return body;
  }

  #openSocket(token) {
    let ws;
    try {
      ws = new WebSocket(webSocketUrl(this.#base), subprotocols(token));
    } catch {
      this.#backoff("lost");
      return;
    }
    this.#ws = ws;
    this.#drainDelay = null;
    ws.addEventListener("message", (event) => this.#onFrame(ws, event));
    ws.addEventListener("close", (event) => this.#onClose(ws, event));
    clearTimeout(this.#helloDeadline);
    this.#helloDeadline = setTimeout(() => {
      if (ws === this.#ws && this.#hello === null) this.#abandon(ws, "lost");
    }, HELLO_DEADLINE_MS);
  }

  #startWatch() {
    this.#stopWatch();
    const now = performance.now();
    this.#lastHeardAt = now;
    this.#lastBeatAt = now;
    this.#unstable = false;
    this.#beatsSent = 0;
    this.#beatsAnswered = 0;
    this.#beat();
    this.#beatTimer = setInterval(() => this.#watch(), WATCH_MS);
  }

  #beat() {
    if (!this.send("alive")) return;
    this.#beatsSent += 1;
    this.#lastBeatAt = performance.now();
  }

  #answered() {
    this.#beatsAnswered += 1;
    const done = this.#waiters.filter((w) => w.beat <= this.#beatsAnswered);
    this.#waiters = this.#waiters.filter((w) => w.beat > this.#beatsAnswered);
    for (const waiter of done) waiter.resolve();
  }

  #stopWatch() {
    clearInterval(this.#beatTimer);
    this.#beatTimer = null;
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const waiter of waiters) waiter.reject(new Error("the socket was lost"));
    clearTimeout(this.#helloDeadline);
    this.#helloDeadline = null;
    this.#unstable = false; // what follows (a reconnection) says more than "steady"
  }

  #watch() {
    const ws = this.#ws;
    if (!ws || !this.ready) return;
    const now = performance.now();
    if (now - this.#lastBeatAt >= this.#bounds.alive_ms) this.#beat();
    const silent = now - this.#lastHeardAt;
    if (silent >= this.#bounds.lost_ms) {
      this.#abandon(ws, "silent");
    } else if (silent >= this.#bounds.unstable_ms && !this.#unstable) {
      this.#unstable = true;
      this.#emit("unstable", { silentMs: Math.round(silent) });
    }
  }

  /** Give up on a socket that may never close by itself; reconnect as after a drop. */
  #abandon(ws, reason) {
    if (ws !== this.#ws) return;
    this.#ws = null;
    this.#hello = null;
    this.#stopWatch();
    try {
      ws.close(CloseCode.NORMAL, reason);
    } catch {
      /* already closing */
    }
    this.#attempt = 0;
    this.#backoff(reason);
  }

  #onFrame(ws, event) {
    if (ws !== this.#ws) return;
    this.#lastHeardAt = performance.now();
    if (this.#unstable) {
      this.#unstable = false;
      this.#emit("steady", {});
    }
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      return;
    }
    if (!frame || typeof frame.op !== "string") return;
    const data = frame.data && typeof frame.data === "object" ? frame.data : {};
    switch (frame.op) {
      case "hello":
        this.#hello = data;
        this.#attempt = 0;
        this.#bounds = livenessOf(data);
        this.#startWatch();
        this.#emit("ready", { hello: data });
        break;
      case "alive":
        this.#answered(); // the answer to a beat: everything sent before it was read
        break;
      case "server_draining":
        // Leave now so our partner hears about it from the server promptly,
        // then come back after the server's delay (to it or its successor).
        this.#drainDelay = drainDelayMs(data.reconnect_after_ms);
        ws.close(CloseCode.NORMAL, "draining");
        break;
      case "error":
        if (data.code === ErrorCode.BANNED) {
          this.#wanted = false;
          this.#emit("banned", { message: data.message ?? "", until: data.until ?? null });
        }
        this.#emit("message", { op: frame.op, data });
        break;
      default:
        this.#emit("message", { op: frame.op, data });
    }
  }

  #onClose(ws, event) {
    if (ws !== this.#ws) return;
    const hadHello = this.#hello !== null;
    this.#ws = null;
    this.#hello = null;
    this.#stopWatch();
    if (event.code === CloseCode.POLICY) {
      if (this.#wanted) this.#emit("banned", { message: event.reason || "", until: null });
      this.#wanted = false;
    }
    if (!this.#wanted) {
      this.#emit("closed", { code: event.code });
      return;
    }
    if (this.#drainDelay !== null) {
      const delay = this.#drainDelay;
      this.#drainDelay = null;
      this.#schedule("draining", delay);
    } else if (event.code === CloseCode.GOING_AWAY || event.code === CloseCode.RESTARTING) {
      this.#schedule("draining", drainDelayMs(0));
    } else {
      // A socket that never said hello (handshake refused) counts as a failed
      // attempt; one that worked and then dropped starts the backoff afresh.
      if (hadHello) this.#attempt = 0;
      this.#backoff("lost");
    }
  }
}
