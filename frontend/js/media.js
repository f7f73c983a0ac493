// The user's camera and microphone.
//
// Invariants:
// * getUserMedia is called only from open() and useDevice(); open() only in
//   video mode and voice mode (the microphone alone: never a camera); text
//   mode never touches the devices. close() stops every
//   track so the camera light goes off.
// * `stream` is one MediaStream for the whole visit: changing the camera or
//   the microphone swaps the track inside it (the new one is opened first;
//   the old one is stopped only once the new one works), and emits "track"
//   {kind, track, old} so the call can replaceTrack() without a new
//   negotiation.

import { t } from "./i18n.js";

const VIDEO = { width: { ideal: 1280 }, height: { ideal: 720 }, facingMode: "user" };
const AUDIO = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };

/** What went wrong, in words a user understands. */
export function describeMediaError(err) {
  switch (err?.name) {
    case "NotAllowedError":
    case "SecurityError":
      return t("mediaError.blocked");
    case "NotFoundError":
    case "OverconstrainedError":
      return t("mediaError.notFound");
    case "NotReadableError":
    case "AbortError":
      return t("mediaError.busy");
    case "InsecureContext":
      return t("mediaError.insecure");
    default:
      return t("mediaError.other");
  }
}

export class LocalMedia extends EventTarget {
  stream = null;
  getUserMediaCalls = 0;
  #switching = false;

  /**
   * Open camera and microphone (or whichever exists); with `video: false`
   * (voice-only), the microphone alone: no camera is ever asked for. Throws a
   * DOMException-like error.
   */
  async open({ video = true } = {}) {
    if (this.stream) return this.stream;
    if (!navigator.mediaDevices?.getUserMedia) {
      const err = new Error("getUserMedia needs a secure context");
      err.name = "InsecureContext";
      throw err;
    }
    const attempts = video
      ? [
          { video: VIDEO, audio: AUDIO },
          { video: false, audio: AUDIO },
          { video: VIDEO, audio: false },
        ]
      : [{ video: false, audio: AUDIO }];
    let lastError;
    for (const constraints of attempts) {
      try {
        this.getUserMediaCalls += 1;
        this.stream = await navigator.mediaDevices.getUserMedia(constraints);
        return this.stream;
      } catch (err) {
        lastError = err;
        // A refusal covers both devices: asking again with fewer would be rude.
        if (err.name === "NotAllowedError" || err.name === "SecurityError") break;
      }
    }
    throw lastError;
  }

  get hasVideo() {
    return (this.stream?.getVideoTracks().length ?? 0) > 0;
  }

  get hasAudio() {
    return (this.stream?.getAudioTracks().length ?? 0) > 0;
  }

  /** The track of `kind` ("audio" or "video") in use, or null. */
  track(kind) {
    return (kind === "video" ? this.stream?.getVideoTracks() : this.stream?.getAudioTracks())?.[0] ?? null;
  }

  setMicEnabled(on) {
    for (const track of this.stream?.getAudioTracks() ?? []) track.enabled = on;
  }

  setCameraEnabled(on) {
    for (const track of this.stream?.getVideoTracks() ?? []) track.enabled = on;
  }

  /** The cameras and microphones this browser lists: {video: [...], audio: [...]}. */
  async devices() {
    const all = (await navigator.mediaDevices?.enumerateDevices?.()) ?? [];
    return {
      video: all.filter((d) => d.kind === "videoinput"),
      audio: all.filter((d) => d.kind === "audioinput"),
    };
  }

  /** The device id of the track of `kind` in use, or "". */
  deviceId(kind) {
    return this.track(kind)?.getSettings?.().deviceId ?? "";
  }

  /**
   * Use another device of `kind`: `choice` is {deviceId} or {facingMode}.
   * Returns the new track; throws (keeping the old track) when it cannot start.
   */
  async useDevice(kind, choice) {
    if (!this.stream || this.#switching) return null;
    this.#switching = true;
    try {
      const old = this.track(kind);
      const base = kind === "video" ? { ...VIDEO } : { ...AUDIO };
      if (choice.deviceId) {
        delete base.facingMode;
        base.deviceId = { exact: choice.deviceId };
      } else if (choice.facingMode) {
        base.facingMode = { exact: choice.facingMode };
      }
      // A phone often cannot open its second camera while the first runs.
      if (old && kind === "video" && choice.facingMode) old.stop();
      this.getUserMediaCalls += 1;
      let fresh;
      try {
        fresh = await navigator.mediaDevices.getUserMedia({ [kind]: base });
      } catch (err) {
        if (old?.readyState === "ended") await this.#reopen(kind, old);
        throw err;
      }
      const track = kind === "video" ? fresh.getVideoTracks()[0] : fresh.getAudioTracks()[0];
      if (old) {
        track.enabled = old.enabled;
        this.stream.removeTrack(old);
        old.stop();
      }
      this.stream.addTrack(track);
      this.dispatchEvent(new CustomEvent("track", { detail: { kind, track, old } }));
      return track;
    } finally {
      this.#switching = false;
    }
  }

  /** The other camera of a phone (front/back), or the next camera in the list. */
  async switchCamera() {
    const current = this.track("video");
    if (!current) return null;
    const facing = current.getSettings?.().facingMode;
    if (facing === "user" || facing === "environment") {
      return this.useDevice("video", { facingMode: facing === "user" ? "environment" : "user" });
    }
    const { video } = await this.devices();
    if (video.length < 2) return null;
    const at = video.findIndex((d) => d.deviceId === this.deviceId("video"));
    return this.useDevice("video", { deviceId: video[(at + 1) % video.length].deviceId });
  }

  async #reopen(kind, old) {
    try {
      const again = await navigator.mediaDevices.getUserMedia({ [kind]: kind === "video" ? VIDEO : AUDIO });
      const track = again.getTracks()[0];
      this.stream.removeTrack(old);
      this.stream.addTrack(track);
      this.dispatchEvent(new CustomEvent("track", { detail: { kind, track, old } }));
    } catch {
      /* nothing more to try: the call goes on without it */
    }
  }

  close() {
    for (const track of this.stream?.getTracks() ?? []) track.stop();
    this.stream = null;
  }
}
