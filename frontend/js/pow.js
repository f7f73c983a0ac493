// Proof of work before a session token (docs/gate.md, "Proof of work";
// docs/protocol.md, "pow").
//
// Invariants:
// * `prepare()` runs as soon as the page loads: it asks `gate/challenge`
//   and, when the server wants proof of work, solves it in the background
//   (web workers running ALTCHA's own SHA-256 solver, vendored in
//   vendor/altcha-3.2.2/), while the first-visit notice is read. Nothing is
//   shown while it works: in the common case it is done before Start.
// * A solution is good for one session token: `take()` hands it over once
//   and starts preparing the next one (a reconnect needs a new token).
// * `take()` waits for the work under way; it answers null when the server
//   asks for none, or when the challenge could not be fetched or solved (the
//   request then goes without, and the server's `pow` answer makes the
//   caller `reset()` and try again).
// * The solver's library and worker are loaded only when a challenge comes.

const VENDOR = "../vendor/altcha-3.2.2/";
const CHALLENGE_DEADLINE_MS = 10_000;
const SOLVE_DEADLINE_MS = 90_000;
const MAX_WORKERS = 4;

/** The `X-Omiro-Pow` header's value: ALTCHA's payload (base64 of its JSON). */
export function encodePayload(challenge, solution) {
  const payload = {
    challenge: { parameters: challenge.parameters, signature: challenge.signature },
    solution: { counter: solution.counter, derivedKey: solution.derivedKey },
  };
  return btoa(JSON.stringify(payload));
}

export class ProofOfWork {
  #base;
  #pending = null; // Promise<string|null>: the next payload
  #solvedMs = null; // how long the last solution took (for the benchmark)

  constructor({ base = document.baseURI } = {}) {
    this.#base = base;
  }

  /** Start fetching and solving the next challenge, unless that is under way. */
  prepare() {
    if (!this.#pending) this.#pending = this.#solve();
    return this.#pending;
  }

  /** The payload for one `session/new` (or null): used up by this call. */
  async take() {
    const payload = await this.prepare();
    this.#pending = null;
    if (payload) this.prepare(); // the next one, for a later token
    return payload;
  }

  /** Drop the prepared payload (the server refused it) and prepare another. */
  reset() {
    this.#pending = null;
    return this.prepare();
  }

  /** Milliseconds the last solved challenge took, or null. */
  get solvedMs() {
    return this.#solvedMs;
  }

  async #solve() {
    let answer;
    try {
      const response = await fetch(new URL("gate/challenge", this.#base), {
        cache: "no-store",
        credentials: "same-origin",
        headers: { Accept: "application/json" },
        signal: AbortSignal.timeout(CHALLENGE_DEADLINE_MS),
      });
      answer = await response.json();
      if (!response.ok) return null;
    } catch {
      return null;
    }
    if (!answer?.required || !answer.challenge) return null;
    try {
      const { solveChallengeWorkers } = await import(`${VENDOR}altcha-lib.min.js`);
      const started = performance.now();
      const workerUrl = new URL(`${VENDOR}workers/sha.js`, import.meta.url);
      const solution = await solveChallengeWorkers({
        challenge: answer.challenge,
        concurrency: Math.min(MAX_WORKERS, navigator.hardwareConcurrency || 1),
        createWorker: () => new Worker(workerUrl),
        timeout: SOLVE_DEADLINE_MS,
      });
      if (!solution) return null;
      this.#solvedMs = Math.round(performance.now() - started);
      return encodePayload(answer.challenge, solution);
    } catch {
      return null;
    }
  }
}
