// One WebRTC call with one stranger: "perfect negotiation" (MDN) over the
// Omiro signaling ops.
//
// Invariants:
// * The server's `should_call` picks the roles: the caller is impolite and
//   adds its tracks at once (so it offers first); the callee is polite, adds
//   its tracks only when the first offer arrives (so it does not race the
//   caller with an offer of its own), and rolls back on any later collision.
// * Incoming signaling is handled strictly in arrival order (one promise
//   chain), and remote ICE candidates wait in a buffer until a remote
//   description is set; a `null` candidate (end of candidates) goes through
//   the same path.
// * A connection that fails, or stays disconnected for
//   RESTART_AFTER_DISCONNECTED_MS, gets an ICE restart (a new offer from
//   whichever side notices; perfect negotiation settles any glare).
// * close() is final and idempotent: every handler is detached, timers
//   cleared, remote tracks stopped and the RTCPeerConnection closed. Local
//   tracks belong to the caller of this module and are left running.

const RESTART_AFTER_DISCONNECTED_MS = 3_000;

const counts = { created: 0, closed: 0 };

/** How many RTCPeerConnections this module made, closed, and holds open. */
export const peerConnectionCounts = {
  get created() {
    return counts.created;
  },
  get closed() {
    return counts.closed;
  },
  get live() {
    return counts.created - counts.closed;
  },
};

export class Call extends EventTarget {
  #pc;
  #polite;
  #send;
  #localStream;
  #makingOffer = false;
  #ignoreOffer = false;
  #settingRemoteAnswer = false;
  #tracksAdded = false;
  #pendingCandidates = [];
  #inbox = Promise.resolve();
  #disconnectedTimer = null;
  #closed = false;
  iceRestarts = 0;
  candidatesBuffered = 0; // remote candidates that came before any remote description
  endOfCandidatesSent = false;
  endOfCandidatesReceived = false;
  collisions = 0; // offers that crossed one of ours
  ignoredOffers = 0; // ...and that we, the impolite side, dropped

  /**
   * @param {object} options
   * @param {RTCIceServer[]} options.iceServers from the server's `hello`
   * @param {"all"|"relay"} [options.iceTransportPolicy] "relay": TURN only (server's relay_only)
   * @param {boolean} options.polite true when `should_call` was false
   * @param {MediaStream|null} options.localStream what we send (may be null)
   * @param {(op: string, data: object) => void} options.send signaling out
   */
  constructor({ iceServers, iceTransportPolicy = "all", polite, localStream, send }) {
    super();
    this.#polite = polite;
    this.#send = send;
    this.#localStream = localStream;
    this.remoteStream = new MediaStream();
    this.#pc = new RTCPeerConnection({ iceServers: iceServers ?? [], iceTransportPolicy });
    counts.created += 1;

    const pc = this.#pc;
    pc.onnegotiationneeded = () => this.#offer();
    pc.onicecandidate = ({ candidate }) => {
      if (!candidate) this.endOfCandidatesSent = true;
      this.#send("ice_candidate", { candidate: candidate ? candidate.toJSON() : null });
    };
    pc.ontrack = ({ track }) => {
      if (!this.remoteStream.getTrackById(track.id)) this.remoteStream.addTrack(track);
      this.#emit("track", { track });
    };
    pc.onconnectionstatechange = () => this.#onConnectionState();

    if (!polite) this.#addLocalTracks();
  }

  get pc() {
    return this.#pc;
  }

  get polite() {
    return this.#polite;
  }

  get closed() {
    return this.#closed;
  }

  /** Feed one signaling message (webrtc_offer, webrtc_answer, ice_candidate). */
  handleSignal(op, data) {
    this.#inbox = this.#inbox
      .then(() => this.#handle(op, data))
      .catch((err) => {
        if (!this.#closed) console.warn("omiro: signaling step failed", op, err);
      });
    return this.#inbox;
  }

  /** Ask for a fresh ICE negotiation (also done automatically on failure). */
  restartIce() {
    if (this.#closed) return;
    this.iceRestarts += 1;
    this.#pc.restartIce();
  }

  /** Round-trip time and path of the selected candidate pair, or null. */
  async quality() {
    if (this.#closed) return null;
    const stats = await this.#pc.getStats();
    let pair = null;
    stats.forEach((report) => {
      if (report.type === "transport" && report.selectedCandidatePairId) {
        pair = stats.get(report.selectedCandidatePairId) ?? pair;
      }
    });
    if (!pair) {
      stats.forEach((report) => {
        if (report.type === "candidate-pair" && report.nominated && report.state === "succeeded") {
          pair = report;
        }
      });
    }
    if (!pair) return null;
    const local = stats.get(pair.localCandidateId);
    const remote = stats.get(pair.remoteCandidateId);
    const relayed = local?.candidateType === "relay" || remote?.candidateType === "relay";
    const rtt = pair.currentRoundTripTime;
    return {
      rttMs: typeof rtt === "number" ? Math.round(rtt * 1000) : null,
      path: relayed ? "relayed" : "direct",
    };
  }

  close() {
    if (this.#closed) return;
    this.#closed = true;
    counts.closed += 1;
    clearTimeout(this.#disconnectedTimer);
    this.#pendingCandidates = [];
    const pc = this.#pc;
    pc.onnegotiationneeded = null;
    pc.onicecandidate = null;
    pc.ontrack = null;
    pc.onconnectionstatechange = null;
    for (const track of this.remoteStream.getTracks()) {
      track.stop();
      this.remoteStream.removeTrack(track);
    }
    pc.close();
    this.#emit("closed", {});
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  #addLocalTracks() {
    if (this.#tracksAdded) return;
    this.#tracksAdded = true;
    const kinds = new Set();
    const stream = this.#localStream;
    for (const track of stream?.getTracks() ?? []) {
      this.#pc.addTrack(track, stream);
      kinds.add(track.kind);
    }
    // The offer must carry both kinds even when we lack one (no camera, say),
    // or the stranger could not send it to us.
    if (!this.#polite) {
      for (const kind of ["audio", "video"]) {
        if (!kinds.has(kind)) this.#pc.addTransceiver(kind, { direction: "recvonly" });
      }
    }
  }

  async #offer() {
    const pc = this.#pc;
    try {
      this.#makingOffer = true;
      await pc.setLocalDescription();
      if (this.#closed) return;
      const { type, sdp } = pc.localDescription;
      this.#send(type === "offer" ? "webrtc_offer" : "webrtc_answer", { sdp });
    } catch (err) {
      if (!this.#closed) console.warn("omiro: could not make an offer", err);
    } finally {
      this.#makingOffer = false;
    }
  }

  async #handle(op, data) {
    if (this.#closed) return;
    if (op === "webrtc_offer" || op === "webrtc_answer") {
      if (typeof data.sdp !== "string") return;
      await this.#onDescription({ type: op === "webrtc_offer" ? "offer" : "answer", sdp: data.sdp });
    } else if (op === "ice_candidate") {
      await this.#onCandidate(data.candidate ?? null);
    }
  }

  async #onDescription(description) {
    const pc = this.#pc;
    const readyForOffer =
      !this.#makingOffer && (pc.signalingState === "stable" || this.#settingRemoteAnswer);
    const collision = description.type === "offer" && !readyForOffer;
    this.#ignoreOffer = !this.#polite && collision;
    if (collision) this.collisions += 1;
    if (this.#ignoreOffer) {
      this.ignoredOffers += 1;
      return;
    }

    this.#settingRemoteAnswer = description.type === "answer";
    try {
      await pc.setRemoteDescription(description); // rolls back our own offer if needed
    } finally {
      this.#settingRemoteAnswer = false;
    }
    if (this.#closed) return;
    await this.#flushCandidates();
    if (description.type === "offer") {
      this.#addLocalTracks();
      await pc.setLocalDescription();
      if (this.#closed) return;
      this.#send("webrtc_answer", { sdp: pc.localDescription.sdp });
    }
  }

  async #onCandidate(candidate) {
    if (candidate === null) this.endOfCandidatesReceived = true;
    if (!this.#pc.remoteDescription) {
      this.candidatesBuffered += 1;
      this.#pendingCandidates.push(candidate);
      return;
    }
    await this.#addCandidate(candidate);
  }

  async #flushCandidates() {
    const pending = this.#pendingCandidates;
    this.#pendingCandidates = [];
    for (const candidate of pending) {
      if (this.#closed) return;
      await this.#addCandidate(candidate);
    }
  }

  async #addCandidate(candidate) {
    try {
      // No argument means end-of-candidates.
      if (candidate === null) await this.#pc.addIceCandidate();
      else await this.#pc.addIceCandidate(candidate);
    } catch (err) {
      // Candidates of an offer we ignored are expected to fail.
      if (!this.#ignoreOffer && !this.#closed && candidate !== null) {
        console.warn("omiro: bad remote ICE candidate", err);
      }
    }
  }

  #onConnectionState() {
    const state = this.#pc.connectionState;
    clearTimeout(this.#disconnectedTimer);
    this.#disconnectedTimer = null;
    if (state === "failed") {
      this.restartIce();
    } else if (state === "disconnected") {
      this.#disconnectedTimer = setTimeout(() => {
        if (!this.#closed && this.#pc.connectionState === "disconnected") this.restartIce();
      }, RESTART_AFTER_DISCONNECTED_MS);
    }
    this.#emit("state", { state });
  }
}
