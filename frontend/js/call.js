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
// * Each call settles on at most one outcome, sent once as `call_outcome`
//   and emitted as an "outcome" event: "connected" (with the time from
//   `match_found` to the first inbound media and the path, direct or relay)
//   or "failed": ICE failed before ever connecting, gathering ended with no
//   candidate of our own (a TURN server that refused us or cannot be
//   reached, when only relays are allowed), or no connection within
//   CONNECT_TIMEOUT_MS. A call closed before it settles is "failed" if it
//   was left waiting GAVE_UP_AFTER_MS or more (the person gave up on it),
//   and reports nothing if it was closed sooner (skipped at once).

const RESTART_AFTER_DISCONNECTED_MS = 3_000;
const CONNECT_TIMEOUT_MS = 30_000;
const GAVE_UP_AFTER_MS = 10_000;
const FIRST_MEDIA_WAIT_MS = 5_000;
const FIRST_MEDIA_POLL_MS = 100;

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
  #kinds;
  #relayOnly = false;
  #makingOffer = false;
  #ignoreOffer = false;
  #settingRemoteAnswer = false;
  #tracksAdded = false;
  #pendingCandidates = [];
  #inbox = Promise.resolve();
  #disconnectedTimer = null;
  #closed = false;
  iceRestarts = 0;
  offersSent = 0;
  tracksReplaced = 0;
  candidatesBuffered = 0; // remote candidates that came before any remote description
  endOfCandidatesSent = false;
  endOfCandidatesReceived = false;
  collisions = 0; // offers that crossed one of ours
  ignoredOffers = 0; // ...and that we, the impolite side, dropped
  localCandidates = 0; // gathered in the current round of gathering
  candidateErrors = []; // {errorCode, errorText, url} from icecandidateerror
  outcome = null; // {outcome, connectMs, path, reason} once settled
  #matchId;
  #startedAt;
  #connectTimer = null;
  #connectedAt = null;

  /**
   * @param {object} options
   * @param {RTCIceServer[]} options.iceServers from the server's `hello`
   * @param {"all"|"relay"} [options.iceTransportPolicy] "relay": TURN only (server's relay_only)
   * @param {boolean} options.polite true when `should_call` was false
   * @param {MediaStream|null} options.localStream what we send (may be null)
   * @param {(op: string, data: object) => void} options.send signaling out
   * @param {string|null} [options.matchId] the match whose outcome this call reports
   * @param {number} [options.startedAt] performance.now() at `match_found`
   */
  constructor({
    iceServers,
    iceTransportPolicy = "all",
    polite,
    localStream,
    send,
    matchId = null,
    startedAt = performance.now(),
    kinds = ["audio", "video"],
  }) {
    super();
    this.#polite = polite;
    this.#kinds = kinds;
    this.#send = send;
    this.#localStream = localStream;
    this.#matchId = matchId;
    this.#startedAt = startedAt;
    this.remoteStream = new MediaStream();
    this.#relayOnly = iceTransportPolicy === "relay";
    this.#pc = new RTCPeerConnection({ iceServers: iceServers ?? [], iceTransportPolicy });
    counts.created += 1;

    const pc = this.#pc;
    pc.onnegotiationneeded = () => this.#offer();
    pc.onicecandidate = ({ candidate }) => {
      // Firefox ends each media section's gathering with a candidate whose
      // `candidate` string is empty (before the final null): it is passed on
      // (it means end-of-candidates for that section) but is no candidate.
      if (!candidate) this.endOfCandidatesSent = true;
      else if (candidate.candidate) this.localCandidates += 1;
      this.#send("ice_candidate", { candidate: candidate ? candidate.toJSON() : null });
    };
    pc.onicecandidateerror = ({ errorCode, errorText, url }) => {
      this.candidateErrors.push({ errorCode, errorText, url });
    };
    pc.onicegatheringstatechange = () => this.#onGatheringState();
    pc.ontrack = ({ track }) => {
      if (!this.remoteStream.getTrackById(track.id)) this.remoteStream.addTrack(track);
      this.#emit("track", { track });
    };
    pc.onconnectionstatechange = () => this.#onConnectionState();

    if (!polite) this.#addLocalTracks();
    const waited = performance.now() - startedAt;
    this.#connectTimer = setTimeout(
      () => this.#fail("timeout"),
      Math.max(0, CONNECT_TIMEOUT_MS - waited),
    );
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

  /**
   * Send `track` instead of the current one of its kind (another camera or
   * microphone) with RTCRtpSender.replaceTrack: no new offer, no new
   * negotiation. Before our tracks are added (the polite side waiting for the
   * first offer) there is nothing to replace: they are taken from the local
   * stream when added.
   */
  async replaceTrack(track) {
    if (this.#closed || !this.#tracksAdded) return false;
    const sender = this.#pc
      .getSenders()
      .find((s) => s.track?.kind === track.kind || (!s.track && this.#senderKind(s) === track.kind));
    if (!sender) return false;
    await sender.replaceTrack(track);
    this.tracksReplaced += 1;
    return true;
  }

  #senderKind(sender) {
    const transceiver = this.#pc.getTransceivers().find((t) => t.sender === sender);
    return transceiver?.receiver.track?.kind ?? null;
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
    const pair = selectedPair(stats);
    if (!pair) return null;
    const rtt = pair.currentRoundTripTime;
    return {
      rttMs: typeof rtt === "number" ? Math.round(rtt * 1000) : null,
      path: selectedPath(stats),
    };
  }

  close() {
    if (this.#closed) return;
    if (performance.now() - this.#startedAt >= GAVE_UP_AFTER_MS) this.#fail("gave-up");
    this.#closed = true;
    counts.closed += 1;
    clearTimeout(this.#disconnectedTimer);
    clearTimeout(this.#connectTimer);
    this.#pendingCandidates = [];
    const pc = this.#pc;
    pc.onnegotiationneeded = null;
    pc.onicecandidate = null;
    pc.onicecandidateerror = null;
    pc.onicegatheringstatechange = null;
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
    // The offer must carry every kind of the call even when we lack one (no
    // camera, say), or the stranger could not send it to us. A voice call
    // has audio alone.
    if (!this.#polite) {
      for (const kind of this.#kinds) {
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
      if (type === "offer") this.offersSent += 1;
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

  #onGatheringState() {
    const state = this.#pc.iceGatheringState;
    if (state === "gathering") this.localCandidates = 0;
    // Nothing of our own to offer: no check can ever succeed.
    else if (state === "complete" && this.localCandidates === 0) this.#fail("no-candidates");
  }

  /** Settle on "failed" unless the call already settled or connected. */
  #fail(reason) {
    if (this.#closed || this.outcome || this.#connectedAt !== null) return;
    clearTimeout(this.#connectTimer);
    // Relays only, and not one candidate of ours: whatever ended it (Firefox
    // declares ICE failed before its gathering completes), the relay server
    // could not be reached.
    if (this.#relayOnly && this.localCandidates === 0 && reason !== "gave-up") reason = "no-candidates";
    const refused = this.candidateErrors.some((e) => e.errorCode === 401 || e.errorCode === 403);
    this.#settle({ outcome: "failed", connectMs: null, path: null, reason: refused ? "refused" : reason });
  }

  #settle(outcome) {
    if (this.#closed || this.outcome) return;
    this.outcome = outcome;
    if (this.#matchId) {
      const data = { match_id: this.#matchId, outcome: outcome.outcome };
      if (outcome.outcome === "connected") {
        data.connect_ms = outcome.connectMs;
        data.path = outcome.path;
      }
      this.#send("call_outcome", data);
    }
    this.#emit("outcome", outcome);
  }

  /** Connected: wait (bounded) for the first inbound media, then settle. */
  async #onConnected() {
    if (this.#connectedAt !== null) return;
    this.#connectedAt = performance.now();
    clearTimeout(this.#connectTimer);
    const deadline = this.#connectedAt + FIRST_MEDIA_WAIT_MS;
    let firstMediaAt = null;
    let path = null;
    while (!this.#closed) {
      let stats;
      try {
        stats = await this.#pc.getStats();
      } catch {
        return; // closed meanwhile
      }
      const now = performance.now();
      path = selectedPath(stats) ?? path;
      let packets = 0;
      stats.forEach((report) => {
        if (report.type === "inbound-rtp") packets += report.packetsReceived ?? 0;
      });
      if (packets > 0) firstMediaAt = now;
      if ((firstMediaAt !== null && path) || now >= deadline) break;
      await new Promise((resolve) => setTimeout(resolve, FIRST_MEDIA_POLL_MS));
    }
    const at = firstMediaAt ?? this.#connectedAt;
    this.#settle({
      outcome: "connected",
      connectMs: Math.max(0, Math.round(at - this.#startedAt)),
      path: path === "relayed" ? "relay" : "direct",
      reason: null,
    });
  }

  #onConnectionState() {
    const state = this.#pc.connectionState;
    clearTimeout(this.#disconnectedTimer);
    this.#disconnectedTimer = null;
    if (state === "connected") this.#onConnected();
    if (state === "failed") {
      this.#fail("ice-failed");
      this.restartIce();
    } else if (state === "disconnected") {
      this.#disconnectedTimer = setTimeout(() => {
        if (!this.#closed && this.#pc.connectionState === "disconnected") this.restartIce();
      }, RESTART_AFTER_DISCONNECTED_MS);
    }
    this.#emit("state", { state });
  }
}

/** The selected candidate pair of a getStats() report, or null. */
function selectedPair(stats) {
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
  return pair;
}

/** "relayed" when either end of the selected pair is a TURN relay, "direct", or null. */
function selectedPath(stats) {
  const pair = selectedPair(stats);
  if (!pair) return null;
  const local = stats.get(pair.localCandidateId);
  const remote = stats.get(pair.remoteCandidateId);
  return local?.candidateType === "relay" || remote?.candidateType === "relay" ? "relayed" : "direct";
}
