// The nudity filter's worker: classifies frames of the stranger's video with
// nsfwjs (MobileNetV2) on TensorFlow.js, off the page's main thread.
//
// A classic worker, because the vendored libraries are UMD bundles loaded
// with importScripts.
//
// The backend: TensorFlow.js's WebAssembly backend (SIMD where the browser
// has it) when it starts, which on a CPU is about five times cheaper per
// frame than the WebGL backend in software; else whatever nsfwjs's bundle
// picks (WebGL, then plain JavaScript). The WebAssembly backend is a
// separate package built for the global `tf` of tfjs-core; nsfwjs's bundle
// carries its own copy of tfjs-core 4.22.0, and both copies share the one
// engine and kernel registry TensorFlow.js keeps on the global object, so
// the model runs on the backend registered here (the versions must match).
//
// Messages in:
//   {type: "load", library, model, tfjs}   URLs of nsfwjs.min.js, model.json
//                                          and the tfjs folder (tf-core, wasm)
//   {type: "frame", id, bitmap}      an ImageBitmap (transferred), any size
// Messages out:
//   {type: "ready", backend, loadMs}
//   {type: "verdict", id, scores, ms}    scores: {Drawing, Hentai, Neutral, Porn, Sexy}
//   {type: "error", message}
//
// Every frame is drawn into one OffscreenCanvas of the model's input size and
// read back as pixels, then closed; nothing is kept and nothing is sent
// anywhere but back to the page.

"use strict";

const INPUT_SIZE = 224;
let model = null;
let canvas = null;
let context = null;

self.onmessage = async ({ data }) => {
  try {
    if (data.type === "load") await load(data);
    else if (data.type === "frame") await classify(data);
  } catch (err) {
    if (data.type === "frame") data.bitmap?.close?.();
    self.postMessage({ type: "error", message: String(err?.message ?? err) });
  }
};

async function load({ library, model: modelUrl, tfjs }) {
  const started = performance.now();
  if (tfjs && typeof WebAssembly === "object") {
    try {
      importScripts(`${tfjs}tf-core.min.js`, `${tfjs}tf-backend-wasm.min.js`);
      // No SharedArrayBuffer without cross-origin isolation: one thread.
      self.tf.env().set("WASM_HAS_MULTITHREAD_SUPPORT", false);
      self.tf.wasm.setWasmPaths(tfjs);
      await self.tf.setBackend("wasm");
    } catch {
      /* nsfwjs's own backends take over */
    }
  }
  importScripts(library);
  model = await self.nsfwjs.load(modelUrl, { size: INPUT_SIZE });
  canvas = new OffscreenCanvas(INPUT_SIZE, INPUT_SIZE);
  context = canvas.getContext("2d", { willReadFrequently: true });
  self.postMessage({
    type: "ready",
    backend: self._tfengine?.backendName ?? "unknown",
    loadMs: Math.round(performance.now() - started),
  });
}

async function classify({ id, bitmap }) {
  if (!model) throw new Error("the model is not loaded");
  const started = performance.now();
  context.drawImage(bitmap, 0, 0, INPUT_SIZE, INPUT_SIZE);
  bitmap.close();
  const pixels = context.getImageData(0, 0, INPUT_SIZE, INPUT_SIZE);
  const predictions = await model.classify(pixels, 5);
  const scores = {};
  for (const { className, probability } of predictions) scores[className] = probability;
  self.postMessage({ type: "verdict", id, scores, ms: performance.now() - started });
}
