// The user's camera and microphone.
//
// Invariant: getUserMedia is called only from open(), and open() is called
// only for video mode; text mode never touches the devices. close() stops
// every track so the camera light goes off.

const VIDEO = { width: { ideal: 1280 }, height: { ideal: 720 }, facingMode: "user" };
const AUDIO = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };

/** What went wrong, in words a user understands. */
export function describeMediaError(err) {
  switch (err?.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "Camera and microphone access was blocked. Allow it in your browser's site settings, or chat by text instead.";
    case "NotFoundError":
    case "OverconstrainedError":
      return "No camera or microphone was found. You can still chat by text.";
    case "NotReadableError":
    case "AbortError":
      return "Your camera or microphone is busy in another app. Close it and try again, or chat by text.";
    case "InsecureContext":
      return "Video needs a secure (https) connection to this site. You can still chat by text.";
    default:
      return "Your camera and microphone could not be started. You can still chat by text.";
  }
}

export class LocalMedia {
  stream = null;
  getUserMediaCalls = 0;

  /** Open camera and microphone (or whichever exists); throws a DOMException-like error. */
  async open() {
    if (this.stream) return this.stream;
    if (!navigator.mediaDevices?.getUserMedia) {
      const err = new Error("getUserMedia needs a secure context");
      err.name = "InsecureContext";
      throw err;
    }
    const attempts = [
      { video: VIDEO, audio: AUDIO },
      { video: false, audio: AUDIO },
      { video: VIDEO, audio: false },
    ];
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

  setMicEnabled(on) {
    for (const track of this.stream?.getAudioTracks() ?? []) track.enabled = on;
  }

  setCameraEnabled(on) {
    for (const track of this.stream?.getVideoTracks() ?? []) track.enabled = on;
  }

  close() {
    for (const track of this.stream?.getTracks() ?? []) track.stop();
    this.stream = null;
  }
}
