// Noticing a silent link within seconds (docs/protocol.md, "Liveness of a call").
//
// A phone that walks out of Wi-Fi closes nothing: its socket and its media
// just go quiet. Two watches say so within the bounds the server announces
// in `hello.liveness` ({alive_ms, unstable_ms, lost_ms}; 2.5 s, 3.75 s and
// 15 s by default):
//
// * MediaWatch watches one RTCPeerConnection: the inbound-rtp packet counters
//   (audio and video together) and the ICE connection state. Once media has
//   flowed, no new packet for `unstable_ms` (or ICE `disconnected`/`failed`)
//   is "unstable", and no new packet for `lost_ms` is "lost"; packets again
//   are "steady". It only reports: the call decides what to do.
// * The signaling socket's watch lives in signaling.js (it beats `alive`
//   every `alive_ms` and hears whether anything comes back).
//
// Every string the user sees about it is in TEXT, each from the message
// catalog (i18n.js).

import { t } from "./i18n.js";

export const TEXT = Object.freeze({
  get unstable() {
    return t("link.unstable");
  },
  get unstableCaption() {
    return t("link.unstableCaption");
  },
  get callLost() {
    return t("link.callLost");
  },
  get partnerLost() {
    return t("link.partnerLost");
  },
  get ownLost() {
    return t("link.ownLost");
  },
  get resumingServer() {
    return t("link.resumingServer");
  },
  get resumingPartner() {
    return t("link.resumingPartner");
  },
  get partnerAway() {
    return t("link.partnerAway");
  },
  get resumed() {
    return t("link.resumed");
  },
  get resumeOver() {
    return t("link.resumeOver");
  },
  get resumeFailed() {
    return t("link.resumeFailed");
  },
});

export const DEFAULT_LIVENESS = Object.freeze({ alive_ms: 2500, unstable_ms: 3750, lost_ms: 15000 });

/** The bounds of `hello.liveness`, or the defaults for a field that is missing or silly. */
export function livenessOf(hello) {
  const given = hello?.liveness ?? {};
  const pick = (key) =>
    Number.isFinite(given[key]) && given[key] > 0 ? given[key] : DEFAULT_LIVENESS[key];
  return { alive_ms: pick("alive_ms"), unstable_ms: pick("unstable_ms"), lost_ms: pick("lost_ms") };
}

const POLL_MS = 500;

/**
 * Events: "unstable" {reason: "media"|"ice"}, "steady" {}, "lost" {} (once).
 * `state` is "steady", "unstable" or "lost".
 */
export class MediaWatch extends EventTarget {
  #pc;
  #bounds;
  #timer = null;
  #packets = -1;
  #lastMediaAt = null; // performance.now() of the last new inbound packet
  #polling = false;
  state = "steady";

  constructor(pc, bounds) {
    super();
    this.#pc = pc;
    this.#bounds = bounds;
    this.#timer = setInterval(() => this.#poll(), POLL_MS);
  }

  /** Milliseconds since the last inbound packet, or null before the first. */
  get silentMs() {
    return this.#lastMediaAt === null ? null : performance.now() - this.#lastMediaAt;
  }

  stop() {
    clearInterval(this.#timer);
    this.#timer = null;
  }

  async #poll() {
    if (this.#polling || this.#timer === null) return;
    this.#polling = true;
    let packets = 0;
    try {
      const stats = await this.#pc.getStats();
      stats.forEach((report) => {
        if (report.type === "inbound-rtp") packets += report.packetsReceived ?? 0;
      });
    } catch {
      this.stop(); // the connection was closed
      return;
    } finally {
      this.#polling = false;
    }
    if (this.#timer === null) return;
    const now = performance.now();
    if (packets > this.#packets) {
      this.#packets = packets;
      if (packets > 0) this.#lastMediaAt = now;
    }
    if (this.#lastMediaAt === null || this.state === "lost") return; // never connected yet
    const silent = now - this.#lastMediaAt;
    const ice = this.#pc.iceConnectionState;
    if (silent >= this.#bounds.lost_ms) {
      this.state = "lost";
      this.stop();
      this.#emit("lost", {});
    } else if (silent >= this.#bounds.unstable_ms || ice === "disconnected" || ice === "failed") {
      if (this.state !== "unstable") {
        this.state = "unstable";
        this.#emit("unstable", { reason: silent >= this.#bounds.unstable_ms ? "media" : "ice" });
      }
    } else if (this.state === "unstable") {
      this.state = "steady";
      this.#emit("steady", {});
    }
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
