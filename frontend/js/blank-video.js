// Notices a stranger's camera that shows nothing: black, frozen, or no
// picture at all, for BLANK_AFTER_MS while the call is connected.
//
// Once a second the <video> is drawn into a tiny canvas (SAMPLE_W×SAMPLE_H,
// a few hundred pixels: cheap) and the inbound video's framesDecoded is read
// from getStats(). A sample is blank when
//   * the video has no picture yet (videoWidth 0),
//   * every pixel is darker than BLACK_MAX_LUMA (a camera turned off or
//     covered sends black),
//   * or nothing moved: the pixels are identical to the previous sample's, or
//     no frame was decoded since it (a frozen or stalled stream).
// After BLANK_AFTER_MS of blank samples in a row the watch emits "blank"
// {reason: "none"|"black"|"frozen", seconds} once; the first sample with a
// live picture after that emits "alive". The pixels are never kept.

export const SAMPLE_MS = 1_000;
export const BLANK_AFTER_MS = 5_000;
const SAMPLE_W = 32;
const SAMPLE_H = 18;
const BLACK_MAX_LUMA = 24; // of 255; a dark room is far brighter somewhere

export class BlankVideoWatch extends EventTarget {
  #video;
  #framesDecoded;
  #timer = null;
  #canvas = null;
  #context = null;
  #previous = null;
  #lastDecoded = null;
  #blankSince = null;
  #busy = false;
  blank = false; // "blank" was emitted and no live picture came since
  reason = null;
  samples = 0;

  /**
   * @param {HTMLVideoElement} video the stranger's video
   * @param {() => Promise<number|null>} framesDecoded the inbound video's
   *   framesDecoded from getStats(), or null when unknown
   */
  constructor(video, framesDecoded) {
    super();
    this.#video = video;
    this.#framesDecoded = framesDecoded;
  }

  get running() {
    return this.#timer !== null;
  }

  start() {
    if (this.#timer) return;
    this.#blankSince = null;
    this.#previous = null;
    this.#lastDecoded = null;
    this.#timer = setInterval(() => this.#sample(), SAMPLE_MS);
  }

  stop() {
    clearInterval(this.#timer);
    this.#timer = null;
    this.#previous = null;
    this.#blankSince = null;
    this.blank = false;
    this.reason = null;
  }

  async #sample() {
    if (this.#busy) return;
    this.#busy = true;
    try {
      const decoded = await this.#framesDecoded().catch(() => null);
      if (!this.#timer) return;
      this.samples += 1;
      const reason = this.#blankReason(decoded);
      const now = performance.now();
      if (reason === null) {
        this.#blankSince = null;
        if (this.blank) {
          this.blank = false;
          this.reason = null;
          this.dispatchEvent(new CustomEvent("alive", { detail: {} }));
        }
        return;
      }
      this.#blankSince ??= now;
      if (!this.blank && now - this.#blankSince >= BLANK_AFTER_MS - SAMPLE_MS / 2) {
        this.blank = true;
        this.reason = reason;
        const seconds = Math.round(BLANK_AFTER_MS / 1000);
        this.dispatchEvent(new CustomEvent("blank", { detail: { reason, seconds } }));
      }
    } finally {
      this.#busy = false;
    }
  }

  #blankReason(decoded) {
    const video = this.#video;
    const stalled = decoded !== null && this.#lastDecoded !== null && decoded === this.#lastDecoded;
    this.#lastDecoded = decoded;
    if (!video.videoWidth || !video.videoHeight) return "none";
    if (!this.#context) {
      this.#canvas = document.createElement("canvas");
      this.#canvas.width = SAMPLE_W;
      this.#canvas.height = SAMPLE_H;
      this.#context = this.#canvas.getContext("2d", { willReadFrequently: true });
    }
    this.#context.drawImage(video, 0, 0, SAMPLE_W, SAMPLE_H);
    const pixels = this.#context.getImageData(0, 0, SAMPLE_W, SAMPLE_H).data;
    let brightest = 0;
    let same = this.#previous !== null;
    for (let i = 0; i < pixels.length; i += 4) {
      const luma = 0.2126 * pixels[i] + 0.7152 * pixels[i + 1] + 0.0722 * pixels[i + 2];
      if (luma > brightest) brightest = luma;
      if (same && (pixels[i] !== this.#previous[i] || pixels[i + 1] !== this.#previous[i + 1])) {
        same = false;
      }
    }
    this.#previous = pixels;
    if (brightest <= BLACK_MAX_LUMA) return "black";
    if (same || stalled) return "frozen";
    return null;
  }
}
