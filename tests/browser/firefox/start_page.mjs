// Opens Omiro in Debian's Firefox ESR (headless, fake camera and microphone,
// over WebDriver BiDi with puppeteer-core), presses Start as a returning
// visitor and waits until the page's call settles (window.omiro.call.outcome)
// or DEADLINE_MS pass; then prints one JSON line of what the page shows.
//
//   node start_page.mjs <page url> <notice version>
//
// Run by tests/browser/calls/test_firefox.py, which owns the server.

import puppeteer from "puppeteer-core";

const [url, noticeVersion] = process.argv.slice(2);
const DEADLINE_MS = 25_000;
const FIREFOX = process.env.FIREFOX ?? "/usr/bin/firefox-esr";

const browser = await puppeteer.launch({
  browser: "firefox",
  executablePath: FIREFOX,
  headless: true,
  extraPrefsFirefox: {
    // Both are needed: a fake device, and no permission prompt for it.
    "media.navigator.streams.fake": true,
    "media.navigator.permission.disabled": true,
  },
});
const errors = [];
const browserNotes = []; // Firefox's own WebRTC diagnostics, reported as page errors
try {
  const page = await browser.newPage();
  page.on("pageerror", (err) => {
    const text = String(err);
    if (text.includes("WebRTC: ICE failed")) browserNotes.push(text);
    else errors.push(text);
  });
  page.on("console", (message) => {
    const text = message.text();
    if (text.startsWith("omiro:")) errors.push(`console: ${text}`);
  });
  await page.evaluateOnNewDocument((version) => {
    localStorage.setItem("omiro.notice", version);
  }, noticeVersion);
  await page.goto(url, { waitUntil: "load" });
  await page.waitForFunction(() => window.omiro !== undefined, { timeout: 10_000 });
  await page.click('[data-testid="start"]');
  await page.waitForFunction(() => window.omiro.call?.outcome, {
    timeout: DEADLINE_MS,
    polling: 100,
  });
  // The overlay fades in; its words are set with the outcome.
  const shown = await page.evaluate(() => ({
    state: window.omiro.state,
    outcome: window.omiro.call.outcome,
    localCandidates: window.omiro.call.localCandidates,
    candidateErrors: window.omiro.call.candidateErrors.map((e) => e.errorCode),
    caption: document.getElementById("overlay-caption").textContent,
    callState: document.body.dataset.call,
    chat: [...document.querySelectorAll('[data-testid="chat-log"] li')].map((li) => li.textContent),
    userAgent: navigator.userAgent,
  }));
  console.log(JSON.stringify({ ok: true, errors, browserNotes, ...shown }));
} catch (err) {
  console.log(JSON.stringify({ ok: false, errors, error: String(err) }));
} finally {
  await browser.close();
}
