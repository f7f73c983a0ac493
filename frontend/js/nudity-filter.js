// The on-device nudity filter (docs/safety.md): nsfwjs's MobileNetV2 model on
// TensorFlow.js, vendored under vendor/ and loaded only by this module, which
// the page imports only when the user (or the operator's default) turns the
// filter on.
//
// A few times a second (every SAMPLE_MS, one frame in flight at most, and
// never more than half of the time: after a frame that took T ms the next
// waits at least T ms, so a slow device classifies less often rather than
// starving the call) the stranger's <video> is turned into a small
// ImageBitmap and classified:
// * in a worker (js/nudity-worker.js, drawing into an OffscreenCanvas) where
//   the browser has Worker and OffscreenCanvas: off the page's main thread,
//   on TensorFlow.js's WebAssembly backend when it starts there;
// * else on the main thread, honestly slower for the page ("main-thread"),
//   on nsfwjs's own backends (WebGL, then JavaScript: the page's
//   Content-Security-Policy allows no WebAssembly).
// A frame whose Porn + Hentai probability reaches EXPLICIT_THRESHOLD emits
// "nudity" {scores, score}: the page blurs the video and offers Report and
// Next. The frames, the pixels and the scores never leave the browser.

export const SAMPLE_MS = 333;
export const MAX_BUSY_SHARE = 0.5; // of the time, at most, spent classifying
export const EXPLICIT_THRESHOLD = 0.7;
export const EXPLICIT_CLASSES = Object.freeze(["Porn", "Hentai"]);
export const INPUT_SIZE = 224;
const VENDOR = "vendor/nsfwjs-4.4.0/";
const LIBRARY = `${VENDOR}nsfwjs.min.js`;
const MODEL = `${VENDOR}mobilenet_v2/model.json`;
const TFJS = "vendor/tfjs-4.22.0/"; // tfjs-core and its WebAssembly backend (worker only)

/** The explicit score of one frame's class probabilities. */
export function explicitScore(scores) {
  return EXPLICIT_CLASSES.reduce((sum, name) => sum + (Number(scores?.[name]) || 0), 0);
}

function url(path) {
  return new URL(path, document.baseURI).href;
}

/** Classifies in a dedicated worker; the page's thread only makes the bitmaps. */
class WorkerClassifier {
  mode = "worker";
  lastMs = null; // the worker's own time for the last frame
  #worker;
  #pending = new Map();
  #next = 0;

  async load() {
    this.#worker = new Worker(url("js/nudity-worker.js"));
    const ready = new Promise((resolve, reject) => {
      this.#worker.onmessage = ({ data }) => {
        if (data.type === "ready") resolve(data);
        else if (data.type === "error" && !this.#pending.size) reject(new Error(data.message));
        else this.#settle(data);
      };
      this.#worker.onerror = (event) => reject(new Error(event.message || "worker failed"));
    });
    this.#worker.postMessage({
      type: "load",
      library: url(LIBRARY),
      model: url(MODEL),
      tfjs: url(TFJS),
    });
    const { backend } = await ready;
    this.#worker.onmessage = ({ data }) => this.#settle(data);
    return backend;
  }

  classify(bitmap) {
    const id = ++this.#next;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.#worker.postMessage({ type: "frame", id, bitmap }, [bitmap]);
    });
  }

  #settle(data) {
    if (data.type === "verdict") {
      this.lastMs = data.ms;
      this.#pending.get(data.id)?.resolve(data.scores);
      this.#pending.delete(data.id);
    } else if (data.type === "error") {
      for (const { reject } of this.#pending.values()) reject(new Error(data.message));
      this.#pending.clear();
    }
  }

  close() {
    this.#worker?.terminate();
    for (const { reject } of this.#pending.values()) reject(new Error("closed"));
    this.#pending.clear();
  }
}

/** The fallback without Worker + OffscreenCanvas: the same model on the page's thread. */
class MainThreadClassifier {
  mode = "main-thread";
  lastMs = null;
  #model = null;
  #context = null;

  async load() {
    if (!window.nsfwjs) {
      await new Promise((resolve, reject) => {
        const script = document.createElement("script");
        script.src = url(LIBRARY);
        script.onload = resolve;
        script.onerror = () => reject(new Error("could not load the filter's library"));
        document.head.append(script);
      });
    }
    this.#model = await window.nsfwjs.load(url(MODEL), { size: INPUT_SIZE });
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = INPUT_SIZE;
    this.#context = canvas.getContext("2d", { willReadFrequently: true });
    return window._tfengine?.backendName ?? "unknown";
  }

  async classify(bitmap) {
    const started = performance.now();
    this.#context.drawImage(bitmap, 0, 0, INPUT_SIZE, INPUT_SIZE);
    bitmap.close();
    const pixels = this.#context.getImageData(0, 0, INPUT_SIZE, INPUT_SIZE);
    const scores = {};
    for (const { className, probability } of await this.#model.classify(pixels, 5)) {
      scores[className] = probability;
    }
    this.lastMs = performance.now() - started;
    return scores;
  }

  close() {}
}

/**
 * Events: "nudity" {scores, score} for a confident frame (once per watch()
 * until the page calls watch() again); "error" {message}.
 */
export class NudityFilter extends EventTarget {
  #classifier;
  #video = null;
  #timer = null;
  #generation = 0; // a sample started before the last watch()/unwatch() schedules nothing
  #busy = false;
  #flagged = false;
  backend = null;
  loadMs = null;
  frames = 0; // frames classified since load
  classifyMs = []; // the last 50 frames: bitmap to verdict, as the page waits for it
  modelMs = []; // the last 50 frames: the classification alone (in the worker, if any)
  lastScores = null;

  get mode() {
    return this.#classifier.mode;
  }

  get flagged() {
    return this.#flagged;
  }

  /** Load the library and the model; resolves when the filter can classify. */
  static async load() {
    const filter = new NudityFilter();
    const offThread = typeof Worker === "function" && typeof OffscreenCanvas === "function";
    filter.#classifier = offThread ? new WorkerClassifier() : new MainThreadClassifier();
    const started = performance.now();
    filter.backend = await filter.#classifier.load();
    filter.loadMs = Math.round(performance.now() - started);
    return filter;
  }

  /** Sample this <video> from now on (a new call: no verdict yet). */
  watch(video) {
    this.#video = video;
    this.#flagged = false;
    if (!this.#timer) {
      this.#generation += 1;
      this.#schedule(SAMPLE_MS);
    }
  }

  /** Stop sampling (the call ended, or the filter was turned off). */
  unwatch() {
    clearTimeout(this.#timer);
    this.#timer = null;
    this.#generation += 1;
    this.#video = null;
    this.#flagged = false;
  }

  close() {
    this.unwatch();
    this.#classifier.close();
  }

  /** Judge one frame's class probabilities (the model's, or a test's). */
  verdict(scores) {
    this.lastScores = scores;
    const score = explicitScore(scores);
    if (score < EXPLICIT_THRESHOLD || this.#flagged || !this.#video) return;
    this.#flagged = true;
    this.dispatchEvent(new CustomEvent("nudity", { detail: { scores, score } }));
  }

  #schedule(delayMs) {
    this.#timer = setTimeout(() => this.#sample(), delayMs);
  }

  async #sample() {
    const video = this.#video;
    const generation = this.#generation;
    const started = performance.now();
    if (this.#busy || !video || video.readyState < 2 || !video.videoWidth) {
      if (this.#timer) this.#schedule(SAMPLE_MS);
      return;
    }
    this.#busy = true;
    try {
      const bitmap = await createImageBitmap(video, {
        resizeWidth: INPUT_SIZE,
        resizeHeight: INPUT_SIZE,
        resizeQuality: "low",
      });
      const scores = await this.#classifier.classify(bitmap);
      this.frames += 1;
      this.classifyMs.push(performance.now() - started);
      this.modelMs.push(this.#classifier.lastMs);
      if (this.classifyMs.length > 50) this.classifyMs.shift();
      if (this.modelMs.length > 50) this.modelMs.shift();
      if (generation === this.#generation) this.verdict(scores); // not a frame of an earlier call
    } catch (err) {
      if (this.#timer && generation === this.#generation) {
        const message = String(err?.message ?? err);
        this.dispatchEvent(new CustomEvent("error", { detail: { message } }));
      }
    } finally {
      this.#busy = false;
      if (this.#timer && generation === this.#generation) {
        const took = performance.now() - started;
        const rest = (took * (1 - MAX_BUSY_SHARE)) / MAX_BUSY_SHARE;
        this.#schedule(Math.max(SAMPLE_MS - took, rest));
      }
    }
  }
}
