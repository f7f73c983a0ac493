// Rebuilds frontend/vendor/nsfwjs/ from the npm package (see its README.md).
//
//   npm pack nsfwjs@4.4.0 && tar xzf nsfwjs-4.4.0.tgz
//   node tools/vendor_nsfwjs.cjs package frontend/vendor/nsfwjs
//
// The library is the package's own browser bundle (dist/browser/nsfwjs.min.js:
// nsfwjs with TensorFlow.js inside), copied as it is. The MobileNetV2 model
// ships in the package as JavaScript holding its JSON and its weights in
// base64; it is written out here as the two files TensorFlow.js loads by URL,
// model.json and its one binary weight shard, with the shard's path renamed
// to end in .bin. The numbers are the package's, byte for byte.
"use strict";
const fs = require("fs");
const path = require("path");

const [source, target] = process.argv.slice(2);
if (!source || !target) {
  console.error("usage: node tools/vendor_nsfwjs.cjs PACKAGE_DIR TARGET_DIR");
  process.exit(2);
}
const dist = path.join(source, "dist");
const modelDir = path.join(target, "mobilenet_v2");
fs.mkdirSync(modelDir, { recursive: true });
fs.copyFileSync(path.join(dist, "browser", "nsfwjs.min.js"), path.join(target, "nsfwjs.min.js"));
fs.copyFileSync(path.join(source, "LICENSE"), path.join(target, "LICENSE"));

const model = require(path.resolve(dist, "models", "mobilenet_v2", "model.min.js"));
const shard = require(path.resolve(dist, "models", "mobilenet_v2", "group1-shard1of1.min.js"));
const weights = Buffer.from(shard, "base64");
const expected = model.weightsManifest[0].paths;
if (expected.length !== 1 || expected[0] !== "group1-shard1of1") {
  throw new Error(`unexpected weight shards: ${expected}`);
}
model.weightsManifest[0].paths = ["group1-shard1of1.bin"];
fs.writeFileSync(path.join(modelDir, "model.json"), JSON.stringify(model));
fs.writeFileSync(path.join(modelDir, "group1-shard1of1.bin"), weights);
console.log(`model.json, ${weights.length} bytes of weights, nsfwjs.min.js`);
