// How loud the stranger is, shown in a voice-only call: the level of the
// remote audio (Web Audio's AnalyserNode), ten times a second.
//
// * What is shown is never colour alone: bars whose height follows the
//   level, and a word ("Speaking" / "Silent") that changes with it; with
//   reduced motion the CSS drops the ring's pulse and every transition, and
//   the bars move in steps.
// * Nothing runs when nothing is seen: the sampling stops while the tab is
//   hidden, and stop() (the call ended) closes the audio graph.
// * The word is not announced (it would talk over the stranger); the
//   status line says once that a voice call began.

import { t } from "./i18n.js";

const SAMPLE_MS = 100;
const SPEAKING_LEVEL = 0.02; // RMS of the waveform (-1..1) above which someone speaks
const HOLD_MS = 600; // "Speaking" stays this long after the voice dips
const BARS = 5;

export class VoiceMeter {
  #root;
  #bars;
  #label;
  #context = null;
  #source = null;
  #analyser = null;
  #samples = null;
  #timer = null;
  #speakingUntil = 0;
  level = 0;
  speaking = false;
  everSpoke = false;

  constructor({ root, bars, label }) {
    this.#root = root;
    this.#label = label;
    this.#bars = [];
    for (let i = 0; i < BARS; i += 1) {
      const bar = document.createElement("span");
      bar.className = "voice-bar";
      this.#bars.push(bar);
    }
    bars.replaceChildren(...this.#bars);
    document.addEventListener("visibilitychange", () => this.#schedule());
    this.#draw();
  }

  /** Follow the audio of `stream` (the stranger's); replaces what was followed. */
  watch(stream) {
    this.stop();
    if (!stream.getAudioTracks().length) return;
    try {
      this.#context = new AudioContext();
      this.#source = this.#context.createMediaStreamSource(stream);
      this.#analyser = this.#context.createAnalyser();
      this.#analyser.fftSize = 2048; // about 43 ms at 48 kHz: a short syllable is not missed
      this.#samples = new Float32Array(this.#analyser.fftSize);
      this.#source.connect(this.#analyser); // not to the speakers: the <video> plays it
      this.#context.resume?.().catch(() => {});
    } catch (err) {
      console.info("voice level unavailable:", err);
      this.stop();
      return;
    }
    this.#schedule();
  }

  /** Stop following; the graph is closed. */
  stop() {
    clearInterval(this.#timer);
    this.#timer = null;
    this.#source?.disconnect();
    this.#context?.close().catch(() => {});
    this.#context = this.#source = this.#analyser = this.#samples = null;
    this.level = 0;
    this.speaking = false;
    this.everSpoke = false;
    this.#draw();
  }

  /** Draw again (the page's language changed). */
  render() {
    this.#draw();
  }

  #schedule() {
    const run = this.#analyser !== null && !document.hidden;
    if (run && this.#timer === null) this.#timer = setInterval(() => this.#sample(), SAMPLE_MS);
    else if (!run && this.#timer !== null) {
      clearInterval(this.#timer);
      this.#timer = null;
    }
  }

  #sample() {
    if (!this.#analyser) return;
    this.#analyser.getFloatTimeDomainData(this.#samples);
    let sum = 0;
    for (const value of this.#samples) sum += value * value;
    this.level = Math.sqrt(sum / this.#samples.length);
    const now = performance.now();
    if (this.level >= SPEAKING_LEVEL) {
      this.#speakingUntil = now + HOLD_MS;
      this.everSpoke = true;
    }
    this.speaking = now < this.#speakingUntil;
    this.#draw();
  }

  #draw() {
    // Loudness on a rough log scale: a whisper lights one bar, a shout all.
    const lit = this.level <= 0 ? 0 : Math.max(0, Math.min(BARS, Math.round((Math.log10(this.level) + 2.4) * 2.5)));
    this.#bars.forEach((bar, index) => bar.classList.toggle("lit", index < lit));
    this.#root.dataset.speaking = String(this.speaking);
    this.#root.style.setProperty("--voice-level", String(Math.min(1, this.level * 8)));
    const key = this.speaking ? "voice.speaking" : "voice.silent";
    if (this.#label.dataset.i18n !== key || this.#label.textContent !== t(key)) {
      this.#label.dataset.i18n = key;
      this.#label.textContent = t(key);
    }
  }
}
