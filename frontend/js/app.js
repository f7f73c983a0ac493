// Omiro's page: the user's intent, the screen state, and the wiring between
// signaling (signaling.js), the call (call.js), the chat (chat.js), the
// devices (media.js), the interests field (interests.js), the page's
// languages (i18n.js) and the safety protections inside the call (safety.js,
// blank-video.js, and the nudity filter, nudity-filter.js, imported only
// when it is on).
//
// States (shown in body[data-state] and on the status line's data-state):
//   idle          nothing going on; Start is the one big button
//   starting      reaching the server (session, socket), then asking for the
//                 camera: the camera is never asked for before the server
//                 answered
//   waiting       in the queue ("Looking for someone…"), also right after a
//                 partner left or we pressed Next
//   connected     matched with a stranger (the call may still be connecting)
//   cooldown      the server refused to queue us (too many skips a minute);
//                 not queued, and queued again by ourselves when it allows
//   reconnecting  the socket dropped or the server is draining; we come back
//                 and rejoin the queue by ourselves
//   blocked       banned, or the devices were refused; a notice says what to do
//
// Invariant: `searching` is the user's wish to be in the queue or in a chat.
// Every path that (re)gains a ready socket while `searching` sends
// `join_queue` (after the camera is open, in video mode); every path that
// ends a match calls endCall(), which leaves no RTCPeerConnection, remote
// track or timer behind. Every word shown comes from t() (i18n.js), and
// what is on screen is drawn again when the language changes.

import { ErrorCode } from "./constants.js";
import { Signaling } from "./signaling.js";
import { ProofOfWork } from "./pow.js";
import { Call, peerConnectionCounts } from "./call.js";
import { ChatView, TitleFlasher, TypingReporter } from "./chat.js";
import { LocalMedia, describeMediaError } from "./media.js";
import { InterestsField } from "./interests.js";
import { SpokenLanguages } from "./speaks.js";
import { VoiceMeter } from "./voice-meter.js";
import { SafetyNotice } from "./notice.js";
import { EntryGate, takeInviteCode } from "./gate.js";
import { TEXT as SAFETY_TEXT, SafetySettings, Veil, cameraKind } from "./safety.js";
import { BlankVideoWatch } from "./blank-video.js";
import {
  LANGUAGES,
  currentLanguage,
  formatDate,
  formatList,
  languageEvents,
  loadLanguage,
  setLanguage,
  t,
} from "./i18n.js";
import { TEXT as LINK_TEXT, MediaWatch } from "./liveness.js";

const STATS_POLL_MS = 15_000;
const QUALITY_POLL_MS = 2_000;
const ESC_AGAIN_MS = 3_000; // a second Esc within this, from a text field, skips
const COOLDOWN_FALLBACK_S = 60; // a refusal that does not say how long
// A remote stream is cut to fill the stage when at least this much of it
// stays visible; otherwise it is shown whole (letterboxed).
const COVER_MIN_VISIBLE = 0.72;
const PAIR_KEY = "omiro.last-pair"; // sessionStorage: the last match's pair tag

await loadLanguage();

const $ = (id) => document.getElementById(id);
const ui = {
  body: document.body,
  start: $("start"),
  next: $("next"),
  stop: $("stop"),
  report: $("report"),
  reportDialog: $("report-dialog"),
  textMode: $("text-mode"),
  voiceMode: $("voice-mode"),
  status: $("status"),
  notice: $("notice"),
  noticeText: $("notice-text"),
  noticeActions: $("notice-actions"),
  stage: $("stage"),
  remoteVideo: $("remote-video"),
  localVideo: $("local-video"),
  unmuteRemote: $("unmute-remote"),
  overlayCaption: $("overlay-caption"),
  cooldownCaption: $("cooldown-caption"),
  quality: $("quality"),
  mute: $("mute"),
  camera: $("camera"),
  switchCamera: $("switch-camera"),
  devices: $("devices"),
  devicesDialog: $("devices-dialog"),
  cameraSelect: $("camera-select"),
  micSelect: $("mic-select"),
  fullscreen: $("fullscreen"),
  online: document.querySelector('[data-testid="online-count"] .online-text'),
  composer: $("composer"),
  chatInput: $("chat-input"),
  chatSend: $("chat-send"),
  chatHint: $("chat-hint"),
  escHint: $("esc-hint"),
  mediaControls: $("media-controls"),
  noticeCountdown: $("notice-countdown"),
  reportForm: $("report-form"),
  reportCancel: $("report-cancel"),
  openNotice: $("open-notice"),
  brand: document.querySelector(".brand"),
  addressPrivacy: $("address-privacy"),
  remoteCameraKind: $("remote-camera-kind"),
  localCameraKind: $("local-camera-kind"),
  language: $("language"),
  languageCode: $("language-code"),
  languageName: $("language-name"),
  callHeading: $("call-heading"),
};

// Solved in the background while the notice is read (when the server asks).
const pow = new ProofOfWork();
pow.prepare();
const signaling = new Signaling({ pow });
const media = new LocalMedia();
const flasher = new TitleFlasher();
const interests = new InterestsField({ input: $("interests"), chips: $("interest-chips") });
const speaks = new SpokenLanguages({ chips: $("speaks-chips"), add: $("speaks-add") });
const voiceMeter = new VoiceMeter({ root: $("voice-stage"), bars: $("voice-bars"), label: $("voice-state") });
const chat = new ChatView({
  log: $("chat-log"),
  input: ui.chatInput,
  sendButton: ui.chatSend,
  typing: $("typing"),
  counter: $("char-count"),
  announce: $("chat-announce"),
});
const typing = new TypingReporter((on) => {
  if (!resuming && !partnerAway) signaling.send("typing", { typing: on });
});
const safety = new SafetyNotice({ dialog: $("welcome"), shortcuts: $("shortcuts") });
const gate = new EntryGate({ dialog: $("gate-dialog"), inviteCode: takeInviteCode() });
const settings = new SafetySettings({
  body: document.body,
  blur: $("blur-setting"),
  filter: $("filter-setting"),
  skipBlank: $("skip-blank-setting"),
});
const veil = new Veil({
  body: document.body,
  video: ui.remoteVideo,
  veil: $("veil"),
  text: $("veil-text"),
  show: $("show-video"),
  blur: $("blur-video"),
  announce: $("video-announce"),
});
const blankWatch = new BlankVideoWatch(ui.remoteVideo, inboundFramesDecoded);
const touchQuery = window.matchMedia("(hover: none) and (pointer: coarse)");

let state = "idle";
let searching = false;
let prefs = null; // what the server last heard from join_queue: {mode, interests}
let match = null; // {id, partner, pair, commonInterests, shouldCall}
let call = null;
let micOn = true;
let cameraOn = true;
let qualityTimer = null;
let countdownTimer = null;
let lastQuality = null;
let partnerLeft = false; // the last match ended from the other side
let lastPartner = null; // the session id of the previous match's stranger
// The pair tag of a match that ended by one side leaving the page (a reload,
// a closed tab): if the next match has the same tag, it is likely the same
// person back. Kept across our own reload in sessionStorage.
let returningPair = takeStoredPair();
let startAfterNotice = false; // Start was pressed before the notice was accepted
let noticeHandlers = []; // what the notice's buttons do: [{label, action, primary, testid}]
let noticeRender = null; // () => [text, actions, tone]: the notice, drawn again on a new language
let callNotice = null; // "filter" or "blank": the notice belongs to this match and ends with it
let filter = null; // the NudityFilter, once loaded
let filterState = "off"; // off, loading, ready, error
let ownCamera = { kind: "none", name: null };
let ownCameraTold = false; // the user heard once that their camera is a virtual one
let statusRender = () => t("status.idle"); // the status line's words, drawn again on a new language
let escArmedUntil = 0; // a first Esc in a text field: a second one before this skips
let escTimer = null;
let cooldownUntil = 0; // performance.now() when the server lets us queue again
let cooldownTimer = null;
let onlineCount = null; // the last /stats answer's `online`, or null
let openingMedia = false;
let mediaWatch = null; // the MediaWatch of the current call
const unstableLinks = new Set(); // what is silent right now: "media", "server"
let connectedWords = () => ""; // the status line of the current match, for when the link steadies
let resuming = null; // {ticket} while the call waits to take its match back after a reconnect
let resumeTimer = null;
let partnerAway = false; // the stranger's socket dropped; the server keeps the match for them
let outbox = []; // [{text, item}]: our lines typed while resuming, sent once it is back
let inFlight = []; // [{item, settled}]: our lines sent, not yet confirmed, oldest first
const RESUME_DEADLINE_MS = 60_000; // how long the page waits for its server to come back
const RESUME_RETRY_MS = 1_000; // a resume refused as `unavailable` (Redis away) is asked again
const RENEW_RETRY_MS = 60_000; // a ticket renewal not answered (a reconnect, a partner away) is asked again
let ticketTtlMs = 0; // hello's ticket_ttl_ms: a ticket is renewed at half its life (0: no tickets)
let renewTimer = null;
let ticketsRenewed = 0; // fresh tickets received (`ticket`), for the tests
const stateLog = [];
const reconnects = []; // {reason, delayMs} of every scheduled reconnection

// ---------------------------------------------------------------- state

/** Enter `next`; `words` is a function giving the status line (or undefined: unchanged). */
function setState(next, words) {
  const focusBefore = document.activeElement;
  if (next !== state) stateLog.push(next);
  state = next;
  ui.body.dataset.state = next;
  ui.status.dataset.state = next;
  if (words !== undefined) {
    statusRender = words;
    writeStatus();
  }
  const active = searching && next !== "blocked";
  ui.start.hidden = active;
  ui.next.hidden = !active;
  ui.stop.hidden = !active;
  // aria-disabled, not disabled: a disabled button would drop the keyboard
  // focus to the page whenever a match ends.
  ui.next.setAttribute("aria-disabled", String(next !== "connected"));
  ui.report.hidden = next !== "connected";
  ui.textMode.disabled = active;
  ui.voiceMode.disabled = active;
  ui.body.dataset.active = String(active);
  writePlaceholder();
  if (next !== "connected") chat.showTyping(false);
  if (next !== "connected") disarmEsc();
  // Focus that was on the page itself (nothing chosen yet) is left alone.
  if (focusBefore && focusBefore !== document.body) rescueFocus();
}

/** Rewriting the same words would make screen readers say them again. */
function writeStatus() {
  const text = statusRender();
  if (ui.status.textContent !== text) ui.status.textContent = text;
}

function writePlaceholder() {
  if (state === "connected") chat.setEnabled(true, t("chat.placeholder"));
  else chat.setEnabled(false, t(state === "waiting" ? "chat.placeholderWaiting" : "chat.placeholderIdle"));
}

/** Keyboard focus never falls to the page: if its element went away, move it on. */
function rescueFocus() {
  const focused = document.activeElement;
  if (ui.reportDialog.open || ui.devicesDialog.open || safety.open) return;
  const lost =
    !focused ||
    focused === document.body ||
    focused.disabled === true ||
    (typeof focused.checkVisibility === "function" && !focused.checkVisibility());
  if (!lost) return;
  const candidates =
    state === "connected" ? [ui.chatInput, ui.next] : searching ? [ui.next, ui.stop] : [ui.start];
  for (const element of [...candidates, ui.start, ui.stop]) {
    if (!element.hidden && !element.disabled) {
      element.focus({ preventScroll: true });
      if (document.activeElement === element) return;
    }
  }
}

function currentMode() {
  return ui.textMode.checked ? "text" : ui.voiceMode.checked ? "voice" : "video";
}

function waitingWords() {
  if (partnerLeft) return () => t("status.partnerLeft");
  const tags = prefs?.interests ?? [];
  return tags.length ? () => t("status.waitingFor", { list: formatList(tags) }) : () => t("status.waiting");
}

// --------------------------------------------------------------- notices

/**
 * Show a message with optional buttons. `render` gives [text, actions, tone]
 * (actions: [{label, action, primary, testid}]) and is called again when the
 * language changes.
 */
function showNotice(render) {
  noticeRender = render;
  const [text, actions = [], tone = "warn"] = render();
  ui.notice.hidden = false;
  ui.notice.dataset.tone = tone;
  ui.noticeCountdown.hidden = true;
  if (ui.noticeText.textContent !== text) ui.noticeText.textContent = text;
  // The same buttons as shown already: keep the elements (and the focus).
  const key = actions.map(({ label, testid }) => `${label}/${testid ?? ""}`).join("|");
  if (ui.noticeActions.dataset.key === key && key) {
    noticeHandlers = actions;
    return;
  }
  ui.noticeActions.dataset.key = key;
  noticeHandlers = actions;
  ui.noticeActions.replaceChildren(
    ...actions.map(({ label, primary, testid }, index) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = primary ? "btn btn-small btn-primary" : "btn btn-small btn-ghost";
      button.textContent = label;
      if (testid) button.dataset.testid = testid;
      button.addEventListener("click", () => noticeHandlers[index]?.action());
      return button;
    }),
  );
}

function hideNotice() {
  const hadFocus = ui.notice.contains(document.activeElement);
  ui.notice.hidden = true;
  ui.noticeText.textContent = "";
  ui.noticeCountdown.hidden = true;
  ui.noticeActions.replaceChildren();
  delete ui.noticeActions.dataset.key;
  noticeHandlers = [];
  noticeRender = null;
  callNotice = null;
  if (hadFocus) rescueFocus();
  clearInterval(countdownTimer);
  countdownTimer = null;
}

/** Run render(secondsLeft) every second until the deadline. */
function countdown(delayMs, render) {
  clearInterval(countdownTimer);
  const deadline = performance.now() + delayMs;
  const tick = () => {
    const left = Math.max(0, Math.ceil((deadline - performance.now()) / 1000));
    render(left);
    if (left === 0) {
      clearInterval(countdownTimer);
      countdownTimer = null;
    }
  };
  tick();
  countdownTimer = setInterval(tick, 1000);
}

// ---------------------------------------------------------- user actions

function start() {
  if (searching) return;
  if (!safety.accepted) {
    startAfterNotice = true;
    safety.show();
    return;
  }
  hideNotice();
  searching = true;
  partnerLeft = false;
  const mode = currentMode();
  // Text touches no device; voice never keeps a camera open.
  if (mode === "text" || (mode === "voice" && media.hasVideo)) {
    media.close();
    hideLocalPreview();
  }
  ui.body.dataset.mode = mode;
  writeHeading();
  // The server first: nobody is asked for a camera that a server which
  // cannot be reached would never use. The camera follows on `hello`.
  setState("starting", () => t("status.connecting"));
  signaling.open();
  if (signaling.ready) ready();
  refreshOnline();
}

/** The socket is ready (again): open the camera if needed, then queue. */
async function ready() {
  if (!searching) return;
  const mode = currentMode();
  if (mode !== "text" && !media.stream) {
    if (openingMedia) return;
    openingMedia = true;
    setState("starting", () => t(mode === "voice" ? "status.allowMicrophone" : "status.allowDevices"));
    try {
      await media.open({ video: mode === "video" });
    } catch (err) {
      searching = false;
      signaling.close(); // nothing to do on the server without a camera
      setState("blocked", () => t("status.needDevices"));
      showNotice(() => [
        describeMediaError(err),
        [
          { label: t("notice.useText"), primary: true, testid: "use-text", action: startTextInstead },
          { label: t("notice.tryAgain"), action: () => start() },
        ],
      ]);
      return;
    } finally {
      openingMedia = false;
    }
    if (!searching) {
      media.close(); // Stop was pressed while the permission prompt was open
      return;
    }
    showLocalPreview();
    if (mode === "video") {
      checkOwnCamera();
      loadFilter();
    }
    refreshDevices();
  }
  if (signaling.ready && !match && !coolingDown()) joinQueue();
}

function startTextInstead() {
  ui.textMode.checked = true;
  ui.voiceMode.checked = false;
  ui.body.dataset.mode = "text";
  start();
}

function joinQueue() {
  if (coolingDown()) return;
  const wanted = wish();
  if (signaling.send("join_queue", wanted)) {
    prefs = wanted;
    if (!match) setState("waiting", waitingWords());
  }
}

/** What join_queue asks for: the mode, the interests and the languages spoken. */
function wish() {
  return { mode: currentMode(), interests: interests.tags, languages: speaks.codes };
}

function samePrefs(a, b) {
  return (
    a &&
    b &&
    a.mode === b.mode &&
    a.interests.join("\n") === b.interests.join("\n") &&
    a.languages.join("\n") === b.languages.join("\n")
  );
}

function next() {
  if (!searching || (state !== "connected" && state !== "waiting")) return;
  disarmEsc();
  if (match) lastPartner = match.partner;
  const wanted = wish();
  const changed = !samePrefs(prefs, wanted);
  if (state === "waiting" && !changed) return; // already looking
  returningPair = null;
  if (match) chat.addSystem(t("system.skipped"));
  endCall();
  partnerLeft = false;
  if (changed) joinQueue();
  else signaling.send("next");
  // If the socket is down, the reconnection rejoins the queue by itself.
  setState("waiting", waitingWords());
}

function stop() {
  if (!searching && state !== "starting") return;
  searching = false;
  lastPartner = null;
  partnerLeft = false;
  if (match) chat.addSystem(t("system.ended"));
  endCall();
  endCooldown();
  // Leave the server too: an idle page is nobody "here" (the online count).
  if (signaling.ready) signaling.send("leave_queue");
  signaling.close();
  media.close();
  hideLocalPreview();
  hideNotice();
  setState("idle", () => t("status.idle"));
  refreshOnline();
}

function sendChat() {
  const text = chat.draft;
  if (!text || !match) return;
  if (resuming || partnerAway) {
    // Kept here, marked "Sending…", and sent in order once the match is back.
    outbox.push({ text, item: chat.addMessage("you", text, "sending") });
    chat.clearDraft();
    typing.reset();
    return;
  }
  if (sendLine(text)) {
    chat.clearDraft();
    typing.stop();
  }
}

/**
 * Send one chat line; it says "Sending…" until the server confirms it took it.
 * The server answers in order: an `error` for a chat comes before the answer to
 * the beat sent behind it, so it settles the oldest line still in flight.
 */
function sendLine(text, item = null) {
  const confirmed = signaling.sendConfirmed("chat", { message: text });
  if (!confirmed) return false;
  const line = { item: item ?? chat.addMessage("you", text, "sending"), settled: false };
  inFlight.push(line);
  const settle = (delivery) => {
    if (line.settled) return;
    line.settled = true;
    inFlight = inFlight.filter((other) => other !== line);
    chat.setDelivery(line.item, delivery);
  };
  confirmed.then(
    () => settle("sent"),
    () => settle("unknown"), // the socket dropped before the server said
  );
  return true;
}

/** The server refused a chat line (not delivered): the oldest in flight. */
function chatRefused() {
  const line = inFlight.shift();
  if (!line || line.settled) return;
  line.settled = true;
  chat.setDelivery(line.item, "failed");
}

/** Ask for a reason and report; `reason` preselects one (the nudity filter's). */
function openReport(reason = null) {
  if (!match) return;
  ui.reportDialog.returnValue = "";
  ui.reportDialog.showModal();
  if (reason) {
    const choice = ui.reportForm.querySelector(`input[name="reason"][value="${reason}"]`);
    if (choice) {
      choice.checked = true;
      choice.focus();
    }
  }
}

function report(reason) {
  if (!match) {
    chat.addSystem(t("system.reportTooLate"), "warn", { announce: true });
    return;
  }
  if (!signaling.send("report", { reason })) {
    chat.addSystem(t("system.reportOffline"), "warn", { announce: true });
    return;
  }
  lastPartner = null; // a reported stranger is never matched with us again
  returningPair = null;
  chat.addSystem(t("system.reported"), "good", { announce: true });
  endCall();
  // The server leaves us idle after a report; look for the next person.
  joinQueue();
  if (!coolingDown()) setState("waiting", waitingWords());
}

// A toggle button keeps one name; only aria-pressed says whether it is on.
function toggleMic() {
  micOn = !micOn;
  media.setMicEnabled(micOn);
  ui.mute.setAttribute("aria-pressed", String(!micOn));
}

function toggleCamera() {
  cameraOn = !cameraOn;
  media.setCameraEnabled(cameraOn);
  ui.camera.setAttribute("aria-pressed", String(!cameraOn));
  ui.body.dataset.camera = cameraOn ? "on" : "off";
}

/** Titles and key hints: only where there is a keyboard, and only keys that work. */
function updateShortcutHints() {
  const touch = touchQuery.matches;
  ui.body.dataset.touch = String(touch);
  const keys = safety.shortcuts && !touch;
  ui.mute.title = t(keys ? "media.muteKey" : "media.mute");
  ui.camera.title = t(keys ? "media.cameraOffKey" : "media.cameraOff");
  ui.next.title = touch ? t("action.next") : t("action.nextTitle");
  ui.chatSend.title = touch ? t("chat.send") : t("chat.sendTitle");
  ui.chatHint.dataset.i18n = touch ? "chat.hintTouch" : "chat.hint";
  ui.chatHint.textContent = t(ui.chatHint.dataset.i18n);
  if (keys) {
    ui.mute.setAttribute("aria-keyshortcuts", "M");
    ui.camera.setAttribute("aria-keyshortcuts", "V");
  } else {
    ui.mute.removeAttribute("aria-keyshortcuts");
    ui.camera.removeAttribute("aria-keyshortcuts");
  }
  if (touch) ui.next.removeAttribute("aria-keyshortcuts");
  else ui.next.setAttribute("aria-keyshortcuts", "Escape");
}

function writeHeading() {
  const mode = currentMode();
  const key =
    mode === "text" ? "call.headingText" : mode === "voice" ? "call.headingVoice" : "call.headingVideo";
  ui.callHeading.dataset.i18n = key;
  ui.callHeading.textContent = t(key);
}

// ------------------------------------------------- Esc, skipping and leaving

/** Esc: Next at once, but from a text field only when pressed twice. */
function onEscape(event) {
  if (document.fullscreenElement) return; // the browser's own: leave full screen
  if (!searching || state !== "connected") return;
  const target = event.target;
  const inField =
    target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement || target?.isContentEditable;
  if (!inField || performance.now() < escArmedUntil) {
    next();
    return;
  }
  escArmedUntil = performance.now() + ESC_AGAIN_MS;
  ui.escHint.textContent = t("chat.escAgain");
  clearTimeout(escTimer);
  escTimer = setTimeout(disarmEsc, ESC_AGAIN_MS);
}

function disarmEsc() {
  escArmedUntil = 0;
  clearTimeout(escTimer);
  escTimer = null;
  if (ui.escHint.textContent) ui.escHint.textContent = "";
}

/** The server refused to queue us: too many skips. Wait, say so, then queue. */
function enterCooldown(retryAfterS) {
  const seconds = Math.max(1, Math.ceil(Number(retryAfterS) || COOLDOWN_FALLBACK_S));
  // The match (if the server kept one) is over for us: end it there too.
  signaling.send("leave_queue");
  endCall();
  cooldownUntil = performance.now() + seconds * 1000;
  clearTimeout(cooldownTimer);
  cooldownTimer = setTimeout(() => {
    endCooldown();
    if (searching && signaling.ready && !match) joinQueue();
  }, seconds * 1000);
  setState("cooldown", () => t("status.cooldown", { n: seconds }));
  showNotice(() => [t("notice.cooldown"), [], "info"]);
  ui.noticeCountdown.hidden = false;
  countdown(seconds * 1000, (left) => {
    ui.noticeCountdown.textContent = t("countdown.cooldown", { n: left });
    ui.cooldownCaption.textContent = t("overlay.cooldown", { n: left });
  });
}

function coolingDown() {
  return performance.now() < cooldownUntil;
}

function endCooldown() {
  const was = cooldownUntil !== 0;
  cooldownUntil = 0;
  clearTimeout(cooldownTimer);
  cooldownTimer = null;
  if (was && state === "cooldown") hideNotice();
}

// The same stranger again after a reload: the session id is new, but the
// server's pair tag (a keyed hash of the two address groups, docs/protocol.md)
// is not. It is compared only across a departure from the page (ours, kept
// in sessionStorage over the reload, or the stranger's: they "left"), so two
// different people behind one network who follow each other after a Next
// are not taken for one.
function takeStoredPair() {
  try {
    const pair = sessionStorage.getItem(PAIR_KEY);
    sessionStorage.removeItem(PAIR_KEY);
    return pair;
  } catch {
    return null;
  }
}

function storePair(pair) {
  try {
    if (pair) sessionStorage.setItem(PAIR_KEY, pair);
  } catch {
    /* not remembered */
  }
}

// ------------------------------------------------------------- the call

function showLocalPreview() {
  ui.localVideo.srcObject = media.stream;
  ui.localVideo.play().catch(() => {});
  media.setMicEnabled(micOn);
  media.setCameraEnabled(cameraOn);
  // A voice call has no picture of ourselves, but its microphone controls.
  const controls = media.hasVideo || currentMode() === "voice";
  ui.body.dataset.preview = controls ? "on" : "off";
  ui.mediaControls.inert = !controls;
}

function hideLocalPreview() {
  ui.localVideo.srcObject = null;
  ui.body.dataset.preview = "off";
  ui.mediaControls.inert = true;
  ui.switchCamera.hidden = true;
}

/** What our own camera says it is; the stranger hears its kind (safety.md). */
function checkOwnCamera() {
  ownCamera = cameraKind(media.stream);
  ui.localCameraKind.hidden = ownCamera.kind !== "virtual";
}

function tellCameraKind() {
  signaling.send("camera_kind", { kind: ownCamera.kind });
  if (ownCamera.kind === "virtual" && !ownCameraTold) {
    ownCameraTold = true;
    chat.addSystem(SAFETY_TEXT.ownVirtual(ownCamera.name), "warn", { announce: true });
  }
}

function beginCall(shouldCall, mode = "video") {
  const voice = mode === "voice";
  call = new Call({
    kinds: voice ? ["audio"] : ["audio", "video"],
    iceServers: signaling.hello?.ice_servers ?? [],
    iceTransportPolicy: signaling.hello?.ice_transport_policy === "relay" ? "relay" : "all",
    polite: !shouldCall,
    localStream: media.stream,
    send: (op, data) => signaling.send(op, data),
    matchId: match?.id ?? null,
  });
  const thisCall = call;
  call.addEventListener("track", () => {
    if (call !== thisCall) return;
    if (ui.remoteVideo.srcObject !== thisCall.remoteStream) {
      ui.remoteVideo.srcObject = thisCall.remoteStream;
      playRemote();
    }
    if (voice) voiceMeter.watch(thisCall.remoteStream);
  });
  call.addEventListener("state", ({ detail }) => {
    if (call !== thisCall) return;
    ui.body.dataset.call = detail.state;
    if (thisCall.outcome?.outcome === "failed") ui.body.dataset.call = "failed";
    else if (detail.state === "failed" || detail.state === "disconnected") {
      ui.overlayCaption.dataset.i18n = "overlay.dropped";
      ui.overlayCaption.textContent = t("overlay.dropped");
    }
  });
  call.addEventListener("outcome", ({ detail }) => {
    if (call !== thisCall || detail.outcome !== "failed") return;
    // Say so instead of spinning forever; the chat still works.
    const key =
      detail.reason === "refused" || detail.reason === "no-candidates"
        ? "system.videoFailedRelay"
        : "system.videoFailed";
    ui.body.dataset.call = "failed";
    ui.overlayCaption.dataset.i18n = key;
    ui.overlayCaption.textContent = t(key);
    chat.addSystem(t(key), "warn", { announce: true });
  });
  call.addEventListener("state", ({ detail }) => {
    // A voice call has no picture: nothing to find blank.
    if (call === thisCall && detail.state === "connected" && !voice) blankWatch.start();
  });
  mediaWatch = new MediaWatch(call.pc, signaling.liveness);
  const thisWatch = mediaWatch;
  mediaWatch.addEventListener("unstable", () => {
    if (mediaWatch !== thisWatch) return;
    thisCall.restartIce(); // whichever side notices first; perfect negotiation settles glare
    linkUnstable("media");
  });
  mediaWatch.addEventListener("steady", () => {
    if (mediaWatch === thisWatch) linkSteady("media");
  });
  mediaWatch.addEventListener("lost", () => {
    if (mediaWatch === thisWatch) callLost();
  });
  ui.body.dataset.call = "new";
  ui.body.dataset.media = "pending";
  ui.overlayCaption.dataset.i18n = "overlay.connecting";
  ui.overlayCaption.textContent = t("overlay.connecting");
  qualityTimer = setInterval(updateQuality, QUALITY_POLL_MS);
  if (voice) return; // no picture: no veil, no filter
  veil.reset(settings.blur);
  if (filter && settings.filter) filter.watch(ui.remoteVideo);
}

/** Languages' names in the page's language ("pt" is "português" on a Portuguese page). */
function languageNames(codes) {
  let names = null;
  try {
    names = new Intl.DisplayNames([currentLanguage()], { type: "language" });
  } catch {
    /* an old browser: the codes */
  }
  return codes.map((code) => names?.of(code) ?? code);
}

/** The inbound video's framesDecoded (for the blank-video watch), or null. */
async function inboundFramesDecoded() {
  const pc = call?.pc;
  if (!pc) return null;
  let frames = null;
  (await pc.getStats()).forEach((report) => {
    if (report.type === "inbound-rtp" && report.kind === "video") {
      frames = report.framesDecoded ?? null;
    }
  });
  return frames;
}

/**
 * A tall stream on a tall stage (a phone held upright showing a phone held
 * upright) fills the stage, cut a little at the edges when their shapes are
 * close; anything else is shown whole (a laptop's wide picture on an
 * upright phone is never cut to a sliver).
 */
function fitRemoteVideo() {
  const video = ui.remoteVideo;
  const box = video.getBoundingClientRect();
  if (!video.videoWidth || !video.videoHeight || !box.width || !box.height) return;
  const stream = video.videoWidth / video.videoHeight;
  const stage = box.width / box.height;
  const visible = Math.min(stream / stage, stage / stream);
  const tall = stream < 1 && stage < 1;
  video.dataset.fit = tall && visible >= COVER_MIN_VISIBLE ? "cover" : "contain";
}

// --------------------------------------------------- camera and microphone

/** Fill the device pickers, and show the switch button when there are two cameras. */
async function refreshDevices() {
  if (!media.stream) return;
  let found;
  try {
    found = await media.devices();
  } catch {
    return;
  }
  ui.switchCamera.hidden = !media.hasVideo || found.video.length < 2;
  fillSelect(ui.cameraSelect, found.video, media.deviceId("video"), "devices.unnamedCamera");
  fillSelect(ui.micSelect, found.audio, media.deviceId("audio"), "devices.unnamedMicrophone");
  ui.cameraSelect.disabled = !media.hasVideo;
  ui.micSelect.disabled = !media.hasAudio;
}

function fillSelect(select, devices, current, unnamed) {
  select.replaceChildren(
    ...devices.map((device, index) => {
      const option = document.createElement("option");
      option.value = device.deviceId;
      option.textContent = device.label || t(unnamed, { n: index + 1 });
      option.selected = device.deviceId === current;
      return option;
    }),
  );
}

/** Use another camera or microphone: the call goes on (replaceTrack, no new offer). */
async function changeDevice(kind, choice) {
  try {
    if (choice === "switch") await media.switchCamera();
    else await media.useDevice(kind, choice);
  } catch (err) {
    console.info("device change failed:", err);
    chat.addSystem(t("system.deviceFailed"), "warn", { announce: true });
  }
  refreshDevices();
}

media.addEventListener("track", ({ detail: { kind, track } }) => {
  // The preview shows the stream; some browsers need it set again.
  ui.localVideo.srcObject = media.stream;
  ui.localVideo.play().catch(() => {});
  if (kind === "audio") track.enabled = micOn;
  else track.enabled = cameraOn;
  call?.replaceTrack(track).catch((err) => console.warn("omiro: replaceTrack failed", err));
  if (kind === "video") {
    const before = ownCamera.kind;
    checkOwnCamera();
    // The stranger is told the new camera's kind (a virtual camera, now or no longer).
    if (match && call && ownCamera.kind !== before) tellCameraKind();
  }
});

async function toggleFullscreen() {
  try {
    if (document.fullscreenElement) await document.exitFullscreen();
    else await ui.stage.requestFullscreen({ navigationUI: "hide" });
  } catch (err) {
    console.info("full screen refused:", err);
  }
}

function writeFullscreen() {
  const on = document.fullscreenElement === ui.stage;
  ui.fullscreen.setAttribute("aria-pressed", String(on));
  const key = on ? "media.exitFullscreen" : "media.fullscreen";
  ui.fullscreen.title = t(key);
  const label = ui.fullscreen.querySelector(".sr-only");
  label.dataset.i18n = key;
  label.textContent = t(key);
}

// ------------------------------------------------------- safety in the call

/** Load the nudity filter (once) if it is on; it then watches every video call. */
function loadFilter() {
  if (!settings.filter || filter || filterState === "loading") return;
  filterState = "loading";
  import("./nudity-filter.js")
    .then(({ NudityFilter }) => NudityFilter.load())
    .then((loaded) => {
      filter = loaded;
      filterState = "ready";
      filter.addEventListener("nudity", onNudity);
      filter.addEventListener("error", ({ detail }) => {
        console.warn("omiro: nudity filter", detail.message);
      });
      if (call && settings.filter) filter.watch(ui.remoteVideo);
    })
    .catch((err) => {
      filterState = "error";
      console.info("nudity filter unavailable:", err);
      chat.addSystem(SAFETY_TEXT.filterFailed, "warn", { announce: true });
    });
}

function onNudity() {
  if (!match || !call) return;
  veil.blur("filter");
  showNotice(() => [
    SAFETY_TEXT.filterFlagged,
    [
      {
        label: SAFETY_TEXT.filterReport,
        primary: true,
        testid: "filter-report",
        action: () => openReport("nudity"),
      },
      { label: SAFETY_TEXT.filterNext, testid: "filter-next", action: () => next() },
    ],
  ]);
  callNotice = "filter";
}

function onBlankVideo({ detail: { seconds } }) {
  if (!match || !call) return;
  if (settings.skipBlank) {
    chat.addSystem(SAFETY_TEXT.blankSkipped(seconds), "warn", { announce: true });
    next();
    return;
  }
  if (callNotice === "filter") return; // the filter's notice says more
  showNotice(() => [
    SAFETY_TEXT.blankVideo(seconds),
    [{ label: SAFETY_TEXT.blankNext, primary: true, testid: "blank-next", action: () => next() }],
  ]);
  callNotice = "blank";
}

function renderAddressPrivacy(relayed) {
  const text = relayed ? SAFETY_TEXT.addressHidden : SAFETY_TEXT.addressVisible;
  if (ui.addressPrivacy.textContent !== text) ui.addressPrivacy.textContent = text;
  ui.addressPrivacy.dataset.relayed = String(relayed);
}

function playRemote() {
  ui.remoteVideo.muted = false;
  ui.remoteVideo.play().catch(() => {
    // Autoplay with sound was refused: play muted and offer a tap to unmute.
    ui.remoteVideo.muted = true;
    ui.remoteVideo.play().catch(() => {});
    ui.unmuteRemote.hidden = false;
  });
}

// ------------------------------------------------------------ liveness

/** Something of the link went silent: say so (once), keep the call. */
function linkUnstable(what) {
  const before = unstableLinks.size;
  unstableLinks.add(what);
  if (before > 0 || state !== "connected") return;
  ui.body.dataset.link = "unstable";
  setState("connected", () => LINK_TEXT.unstable);
  if (call) {
    ui.overlayCaption.dataset.i18n = "link.unstableCaption";
    ui.overlayCaption.textContent = LINK_TEXT.unstableCaption;
  }
}

function linkSteady(what) {
  if (!unstableLinks.delete(what) || unstableLinks.size > 0) return;
  delete ui.body.dataset.link;
  if (state === "connected") setState("connected", connectedWords);
}

function forgetLink() {
  unstableLinks.clear();
  delete ui.body.dataset.link;
}

/** Nothing came from the stranger for the whole bound: end the call and say why. */
function callLost() {
  if (!match) return;
  const own = signaling.unstable; // our side went silent, not theirs
  // Announced: the status line then says only that we are looking again.
  chat.addSystem(own ? LINK_TEXT.ownLost : LINK_TEXT.callLost, "warn", { announce: true });
  signaling.send("peer_lost", { match_id: match.id });
  lastPartner = match.partner;
  returningPair = own ? null : match.pair; // their network dropped: they may reload
  endCall();
  flasher.notify(t("title.lost"));
  if (!searching) return;
  partnerLeft = false;
  setState("waiting", waitingWords());
  joinQueue(); // the server spends no skip on it: nobody chose this end
}

// ------------------------------------------------------------ resuming

/** The signaling socket dropped in a call that has a ticket: keep the call, come back. */
function startResuming() {
  if (resuming) return;
  resuming = { ticket: match.ticket };
  clearTimeout(resumeTimer);
  resumeTimer = setTimeout(() => resumeFailed(LINK_TEXT.resumeFailed), RESUME_DEADLINE_MS);
  unstableLinks.add("server");
  ui.body.dataset.link = "resuming";
  setState("connected", () => LINK_TEXT.resumingServer);
}

/** Ask for a fresh ticket at half the current one's life: a long call outlives a ticket. */
function renewLater() {
  clearTimeout(renewTimer);
  renewTimer = null;
  if (match?.ticket && ticketTtlMs > 0) renewTimer = setTimeout(renewTicket, ticketTtlMs / 2);
}

function renewTicket() {
  if (!match?.ticket) return;
  if (!resuming) signaling.send("renew_ticket");
  // The answer (`ticket`) re-arms this at half the new ticket's life; without one, ask again.
  renewTimer = setTimeout(renewTicket, RENEW_RETRY_MS);
}

function askToResume() {
  if (resuming && match) signaling.send("resume", { ticket: resuming.ticket });
}

function resumeFailed(text) {
  if (!resuming || !match) return;
  chat.addSystem(text, "warn", { announce: true });
  lastPartner = match.partner;
  endCall();
  if (!searching) return;
  setState("waiting", waitingWords());
  joinQueue();
}

function endCall() {
  match = null;
  resuming = null;
  partnerAway = false;
  clearTimeout(resumeTimer);
  resumeTimer = null;
  clearTimeout(renewTimer);
  renewTimer = null;
  for (const { item } of outbox) chat.setDelivery(item, "failed");
  outbox = [];
  mediaWatch?.stop();
  mediaWatch = null;
  forgetLink();
  typing.reset();
  chat.showTyping(false);
  clearInterval(qualityTimer);
  qualityTimer = null;
  lastQuality = null;
  ui.quality.hidden = true;
  ui.unmuteRemote.hidden = true;
  ui.remoteCameraKind.hidden = true;
  blankWatch.stop();
  voiceMeter.stop();
  filter?.unwatch();
  if (callNotice) hideNotice();
  if (call) {
    call.close();
    call = null;
  }
  ui.remoteVideo.pause();
  ui.remoteVideo.srcObject = null;
  ui.remoteVideo.removeAttribute("src");
  delete ui.remoteVideo.dataset.fit;
  delete ui.body.dataset.call;
  delete ui.body.dataset.media;
}

async function updateQuality() {
  const current = call;
  if (!current) return;
  let quality = null;
  try {
    quality = await current.quality();
  } catch {
    /* closed meanwhile */
  }
  if (current !== call) return;
  lastQuality = quality;
  writeQuality();
}

function writeQuality() {
  const quality = lastQuality;
  if (!quality) {
    ui.quality.hidden = true;
    return;
  }
  const rtt = quality.rttMs;
  const grade = rtt === null ? "ok" : rtt < 150 ? "good" : rtt < 400 ? "ok" : "poor";
  const relayed = quality.path === "relayed";
  ui.quality.dataset.grade = grade;
  ui.quality.dataset.path = quality.path;
  ui.quality.textContent = t(relayed ? "quality.relayed" : "quality.direct", {
    ms: rtt === null ? "–" : new Intl.NumberFormat(currentLanguage()).format(rtt),
  });
  ui.quality.title = t(relayed ? "quality.relayedTitle" : "quality.directTitle");
  ui.quality.hidden = false;
}

// ------------------------------------------------------ server messages

const handlers = {
  queued() {
    if (searching && !match && !coolingDown()) setState("waiting", waitingWords());
  },

  match_found(data) {
    if (!searching) return; // crossed our leave_queue; the server ends it
    if (coolingDown()) return; // crossed our leave_queue too
    endCall();
    partnerLeft = false;
    match = {
      id: data.match_id ?? null,
      ticket: typeof data.ticket === "string" ? data.ticket : null,
      partner: data.partner ?? null,
      pair: typeof data.pair === "string" ? data.pair : null,
      commonInterests: Array.isArray(data.common_interests) ? data.common_interests.map(String) : [],
      commonLanguages: Array.isArray(data.common_languages) ? data.common_languages.map(String) : [],
      shouldCall: data.should_call === true,
    };
    renewLater();
    const common = match.commonInterests;
    const mode = data.mode === "text" || data.mode === "voice" ? data.mode : "video";
    // The same person as last time: the same session (nobody else was
    // free), or the same pair of networks after a reload (the server's tag).
    const same =
      (match.partner !== null && match.partner === lastPartner) ||
      (match.pair !== null && match.pair === returningPair);
    returningPair = null;
    lastPartner = match.partner;
    // The status line says it (once, for screen readers too); the chat keeps a line.
    if (same) {
      chat.addSystem(t("system.same"), "warn");
    } else {
      chat.clear();
      const key =
        mode === "text" ? "system.matchedText" : mode === "voice" ? "system.matchedVoice" : "system.matchedVideo";
      chat.addSystem(t(key), "good");
    }
    if (common.length) chat.addSystem(t("system.common", { list: formatList(common) }), "good");
    // Said when it is news: a language shared that is not the page's own.
    const spoken = match.commonLanguages;
    if (spoken.length && spoken.join() !== currentLanguage()) chat.addSystem(t("system.commonLanguages", { list: formatList(languageNames(spoken)) }), "good");
    connectedWords = same
      ? () => t("status.same")
      : common.length
        ? () => t("status.connectedCommon", { list: formatList(common) })
        : () => t("status.connected");
    setState("connected", connectedWords);
    if (mode !== "text" && media.stream) {
      if (mode === "video") tellCameraKind();
      beginCall(match.shouldCall, mode);
    }
    flasher.notify(t("title.found"));
    chat.focus();
    refreshOnline();
  },

  resuming() {
    if (resuming && match) setState("connected", () => LINK_TEXT.resumingPartner);
  },

  ticket(data) {
    if (!match || data.match_id !== match.id || typeof data.ticket !== "string") return;
    match.ticket = data.ticket;
    ticketsRenewed += 1;
    renewLater();
  },

  partner_away() {
    if (!match || resuming) return;
    partnerAway = true;
    ui.body.dataset.link = "partner-away";
    setState("connected", () => LINK_TEXT.partnerAway);
  },

  resumed(data) {
    if (!match || (!resuming && !partnerAway)) return; // we had moved on; the server ends it
    partnerAway = false;
    match.id = data.match_id ?? match.id;
    match.partner = data.partner ?? match.partner;
    match.ticket = typeof data.ticket === "string" ? data.ticket : null;
    renewLater();
    resuming = null;
    clearTimeout(resumeTimer);
    resumeTimer = null;
    delete ui.body.dataset.link;
    unstableLinks.delete("server");
    if (unstableLinks.size === 0) setState("connected", connectedWords);
    chat.addSystem(LINK_TEXT.resumed, "good");
    const lines = outbox;
    outbox = [];
    for (const { text, item } of lines) {
      if (!sendLine(text, item)) chat.setDelivery(item, "failed");
    }
  },

  partner_disconnected(data) {
    if (!match) return; // we had already moved on (next/stop/report)
    const reason = data.reason;
    // Not announced: the status line says the stranger left.
    chat.addSystem(
      reason === "lost"
        ? signaling.unstable
          ? LINK_TEXT.ownLost
          : LINK_TEXT.partnerLost
        : t(
            reason === "next"
              ? "system.partnerNext"
              : reason === "timeout"
                ? "system.partnerTimeout"
                : reason === "reported"
                  ? "system.partnerReported"
                  : "system.partnerLeft",
          ),
      "warn",
    );
    lastPartner = match.partner;
    // Gone from the page (closed, reloaded, lost): they may come back.
    returningPair = reason === "left" || reason === "timeout" || reason === "lost" ? match.pair : null;
    endCall();
    flasher.notify(t("title.left"));
    if (!searching) return;
    partnerLeft = true;
    setState("waiting", waitingWords());
    joinQueue();
  },

  chat(data) {
    if (!match || typeof data.message !== "string") return;
    chat.showTyping(false);
    chat.addMessage("stranger", data.message);
    flasher.notify(t("title.message"));
  },

  typing(data) {
    if (match) chat.showTyping(data.typing === true);
  },

  camera_kind(data) {
    if (!match || !call) return;
    if (data.kind === "virtual") {
      ui.remoteCameraKind.hidden = false;
      chat.addSystem(SAFETY_TEXT.strangerVirtual, "warn", { announce: true });
    } else if (data.kind === "none") {
      chat.addSystem(SAFETY_TEXT.strangerNoCamera, "info", { announce: true });
    } else {
      ui.remoteCameraKind.hidden = true; // a real camera now
    }
  },

  webrtc_offer(data, op) {
    call?.handleSignal(op, data);
  },
  webrtc_answer(data, op) {
    call?.handleSignal(op, data);
  },
  ice_candidate(data, op) {
    call?.handleSignal(op, data);
  },

  error(data) {
    if (data.op === "chat") chatRefused(); // whatever the reason, that line was not delivered
    switch (data.code) {
      case ErrorCode.NOT_MATCHED:
        // Our `next` crossed the partner's: we are out of the match but not
        // queued, so queue now.
        if (data.op === "next" && searching && !match) joinQueue();
        // (A peer_lost that crossed the match's end elsewhere needs nothing.)
        break;
      case ErrorCode.UNAVAILABLE:
        // A relayed op that did not reach the stranger (they are reconnecting,
        // or the service is briefly away): chat lines are marked above.
        if (data.op === "join_queue") {
          const reason = data.message || data.code;
          showNotice(() => [t("notice.refused", { reason })]);
        }
        // Nothing was taken: ask again while the call waits (RESUME_DEADLINE_MS bounds it).
        if (data.op === "resume") setTimeout(askToResume, RESUME_RETRY_MS);
        break;
      case ErrorCode.MESSAGE_TOO_LONG:
        chat.addSystem(t("system.tooLong", { n: chat.maxLength }), "warn", { announce: true });
        break;
      case ErrorCode.RATE_LIMITED:
        if ((data.op === "next" || data.op === "join_queue") && searching) {
          // Too many skips a minute: the server queued us nowhere. Say so,
          // and queue again when it allows, instead of seeming to wait.
          enterCooldown(data.retry_after);
        } else {
          chat.addSystem(t("system.tooFast"), "warn", { announce: true });
        }
        break;
      case ErrorCode.BANNED:
        break; // signaling emits "banned"
      case ErrorCode.MATCH_OVER:
      case ErrorCode.TICKET_USED:
      case ErrorCode.TICKET_EXPIRED:
      case ErrorCode.BAD_TICKET:
        if (data.op === "resume") {
          resumeFailed(data.code === ErrorCode.MATCH_OVER ? LINK_TEXT.resumeOver : LINK_TEXT.resumeFailed);
        }
        break;
      default:
        if (data.op === "join_queue") {
          const reason = data.message || data.code;
          showNotice(() => [t("notice.refused", { reason })]);
        }
        console.warn("omiro: server error", data);
    }
  },
};

const RELAYED = new Set([
  "chat",
  "typing",
  "webrtc_offer",
  "webrtc_answer",
  "ice_candidate",
  "camera_kind",
]);

signaling.addEventListener("message", ({ detail: { op, data } }) => {
  // Relayed messages name their sender; anything not from the current
  // partner is a leftover of an earlier match and is dropped.
  if (RELAYED.has(op) && (!match || (data.from && match.partner && data.from !== match.partner))) return;
  handlers[op]?.(data, op);
});

signaling.addEventListener("ready", ({ detail: { hello } }) => {
  const max = hello?.limits?.max_chat_length;
  if (Number.isInteger(max)) chat.maxLength = max;
  const ttl = hello?.ticket_ttl_ms;
  ticketTtlMs = Number.isInteger(ttl) && ttl > 0 ? ttl : 0;
  renderAddressPrivacy(hello?.ice_transport_policy === "relay");
  hideNotice();
  if (resuming && match) askToResume();
  else if (searching) ready();
  refreshOnline();
});

signaling.addEventListener("reconnecting", ({ detail: { reason, delayMs } }) => {
  reconnects.push({ reason, delayMs });
  // (Silent for the whole liveness bound: the server has ended the match already.)
  if (match && match.ticket && searching && reason !== "silent" && mediaWatch?.state !== "lost") {
    // The call does not need the server: keep it, and take the match back.
    startResuming();
    return;
  }
  if (match) {
    chat.addSystem(reason === "silent" ? LINK_TEXT.ownLost : t("system.lostChat"), "warn");
    lastPartner = match.partner;
  }
  endCall();
  endCooldown();
  partnerLeft = false;
  if (!searching) return;
  const key =
    reason === "draining"
      ? "reconnect.draining"
      : reason === "rate_limited"
        ? "reconnect.rateLimited"
        : reason === "paused"
          ? "reconnect.paused"
          : reason === "unreachable"
            ? navigator.onLine === false
              ? "reconnect.offline"
              : "reconnect.unreachable"
            : "reconnect.lost";
  setState("reconnecting", () => t("status.reconnecting", { what: t(key) }));
  showOffline();
  // The message is said once; only the (unannounced) countdown ticks, and
  // the Retry button stays the same element, so focus on it is kept.
  showNotice(() => [
    t(key),
    [{ label: t("notice.retry"), action: () => signaling.retryNow(), testid: "retry" }],
    "info",
  ]);
  ui.noticeCountdown.hidden = false;
  countdown(delayMs, (left) => {
    ui.noticeCountdown.textContent = left > 0 ? t("countdown.retry", { n: left }) : t("countdown.now");
  });
});

signaling.addEventListener("unstable", () => linkUnstable("server"));
signaling.addEventListener("steady", () => linkSteady("server"));

signaling.addEventListener("banned", ({ detail: { message, until } }) => {
  searching = false;
  endCall();
  endCooldown();
  media.close();
  hideLocalPreview();
  setState("blocked", () => t("status.banned"));
  showNotice(() => {
    const words = until ? t("ban.until", { date: formatDate(new Date(until * 1000)) }) : t("ban.message");
    return [message ? `${words} ${message}` : words, [], "error"];
  });
  ui.start.disabled = true;
  ui.body.dataset.banned = "true";
});

// The entry gate (gate.js): its screen asks, and once the pass is set the
// page starts again by itself.
signaling.addEventListener("gate", ({ detail }) => {
  searching = false;
  endCall();
  endCooldown();
  media.close();
  hideLocalPreview();
  hideNotice();
  setState("idle", () => t("status.gate"));
  gate.ask(detail);
});
gate.addEventListener("admitted", () => start());
gate.addEventListener("dismissed", () => {
  if (!searching) ui.start.focus();
});

signaling.addEventListener("closed", () => {
  if (searching) return;
  endCall();
  writeOnline();
});

// ------------------------------------------------------------ online count

/**
 * "N people here": the people connected to the service (searching or in a
 * chat; a page that is not started, or was stopped, holds no connection),
 * counting the reader, who is here too. Never "0".
 */
async function refreshOnline() {
  if (state === "reconnecting") {
    showOffline(); // never "3 here" beside "Can't reach the server"
    return;
  }
  try {
    const response = await fetch(new URL("stats", document.baseURI), { cache: "no-store" });
    if (!response.ok) throw new Error(String(response.status));
    const stats = await response.json();
    onlineCount = Math.max(0, Number(stats.online) || 0);
    writeOnline();
  } catch {
    showOffline();
  }
}

function writeOnline() {
  if (onlineCount === null || state === "reconnecting") return;
  const here = Math.max(1, onlineCount + (signaling.ready ? 0 : 1));
  delete ui.online.dataset.i18n;
  ui.online.textContent = here === 1 ? t("online.justYou") : t("online.people", { n: here });
  ui.online.parentElement.dataset.online = String(here);
}

function showOffline() {
  onlineCount = null;
  ui.online.dataset.i18n = "online.offline";
  ui.online.textContent = t("online.offline");
  delete ui.online.parentElement.dataset.online;
}

// --------------------------------------------------------------- languages

function fillLanguagePicker() {
  ui.language.replaceChildren(
    ...LANGUAGES.map(({ code, name }) => {
      const option = new Option(name, code, false, code === currentLanguage());
      option.lang = code;
      return option;
    }),
  );
  writeLanguagePill();
}

function writeLanguagePill() {
  const { code, name } = LANGUAGES.find((l) => l.code === currentLanguage()) ?? LANGUAGES[0];
  ui.language.value = code;
  ui.languageCode.textContent = code.toUpperCase();
  ui.languageName.textContent = name;
  ui.languageName.lang = code;
}

/** Everything the page wrote itself, in the new language. */
function retranslate() {
  writeLanguagePill();
  writeStatus();
  writePlaceholder();
  chat.retranslate();
  if (noticeRender) {
    const countdownShown = !ui.noticeCountdown.hidden;
    showNotice(noticeRender);
    ui.noticeCountdown.hidden = !countdownShown;
  }
  if (ui.escHint.textContent) ui.escHint.textContent = t("chat.escAgain");
  updateShortcutHints();
  writeHeading();
  gate.render();
  writeFullscreen();
  interests.render();
  speaks.pageLanguageChanged();
  voiceMeter.render();
  veil.refresh();
  renderAddressPrivacy(ui.addressPrivacy.dataset.relayed === "true");
  writeQuality();
  writeOnline();
  refreshDevices();
  flasher.base = t("page.title");
}

// ------------------------------------------------------------------ wiring

ui.start.addEventListener("click", () => start());
ui.next.addEventListener("click", () => next());
ui.stop.addEventListener("click", () => stop());
ui.report.addEventListener("click", () => openReport());
ui.mute.addEventListener("click", () => toggleMic());
ui.camera.addEventListener("click", () => toggleCamera());
ui.switchCamera.addEventListener("click", () => changeDevice("video", "switch"));
ui.devices.addEventListener("click", async () => {
  await refreshDevices();
  ui.devicesDialog.showModal();
});
ui.cameraSelect.addEventListener("change", () => changeDevice("video", { deviceId: ui.cameraSelect.value }));
ui.micSelect.addEventListener("change", () => changeDevice("audio", { deviceId: ui.micSelect.value }));
ui.devicesDialog.addEventListener("close", () => rescueFocus());
ui.fullscreen.addEventListener("click", () => toggleFullscreen());
ui.fullscreen.hidden = !(document.fullscreenEnabled && typeof ui.stage.requestFullscreen === "function");
let fullscreenLeftAt = -Infinity;
document.addEventListener("fullscreenchange", () => {
  if (!document.fullscreenElement) fullscreenLeftAt = performance.now();
  writeFullscreen();
});
ui.remoteVideo.addEventListener("playing", () => {
  if (call) ui.body.dataset.media = "playing";
  fitRemoteVideo();
});
ui.remoteVideo.addEventListener("resize", () => fitRemoteVideo());
new ResizeObserver(() => fitRemoteVideo()).observe(ui.stage);
ui.unmuteRemote.addEventListener("click", () => {
  ui.remoteVideo.muted = false;
  ui.unmuteRemote.hidden = true;
});
ui.reportCancel.addEventListener("click", () => ui.reportDialog.close("cancel"));
ui.reportForm.addEventListener("keydown", (event) => {
  // Enter anywhere but on a button submits the report (a reason is required).
  if (event.key !== "Enter" || event.target instanceof HTMLButtonElement) return;
  event.preventDefault();
  ui.reportForm.requestSubmit(ui.reportForm.querySelector('[value="report"]'));
});
ui.reportDialog.addEventListener("close", () => {
  const chosen = ui.reportDialog.querySelector('input[name="reason"]:checked');
  const reason = chosen?.value;
  ui.reportForm.reset(); // no reason is ever preselected
  if (ui.reportDialog.returnValue === "report" && reason) report(reason);
  rescueFocus();
});
ui.openNotice.addEventListener("click", () => safety.show());
ui.language.addEventListener("change", () => {
  setLanguage(ui.language.value).catch((err) => {
    console.info("language change failed:", err);
    writeLanguagePill();
  });
});
languageEvents.addEventListener("change", () => retranslate());
settings.addEventListener("change", ({ detail: { name, on } }) => {
  if (name === "filter" && on && filter && call) filter.watch(ui.remoteVideo);
  else if (name === "filter" && on && media.stream) loadFilter();
  else if (name === "filter" && !on) filter?.unwatch();
  else if (name === "blur" && call && !veil.shownByUser && veil.reason !== "filter") veil.reset(on);
});
blankWatch.addEventListener("blank", onBlankVideo);
blankWatch.addEventListener("alive", () => {
  if (callNotice === "blank") hideNotice();
});
safety.addEventListener("closed", ({ detail: { accepted } }) => {
  updateShortcutHints();
  const wanted = startAfterNotice;
  startAfterNotice = false;
  if (accepted && wanted) start();
  else rescueFocus();
});
ui.brand.addEventListener("click", (event) => {
  // The logo reloads the page; during a chat that would end it without a word.
  if (searching) event.preventDefault();
});
// Video, voice or text: at most one of the two switches is on.
for (const [toggle, other] of [
  [ui.textMode, ui.voiceMode],
  [ui.voiceMode, ui.textMode],
]) {
  toggle.addEventListener("change", () => {
    if (toggle.checked) other.checked = false;
    ui.body.dataset.mode = currentMode();
    writeHeading();
  });
}
for (const field of [interests, speaks]) {
  field.addEventListener("change", () => {
    // While only waiting, new interests or languages take effect at once.
    if (searching && state === "waiting" && !match) joinQueue();
  });
}

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  sendChat();
});
// A tap on Send keeps the focus (and a phone's keyboard) in the message box,
// and leaves no focus ring on a button that the send then disables.
ui.chatSend.addEventListener("pointerdown", (event) => {
  if (event.pointerType !== "mouse") event.preventDefault();
});
ui.chatInput.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    sendChat();
  }
});
ui.chatInput.addEventListener("input", () => {
  disarmEsc();
  if (match) typing.keystroke(ui.chatInput.value.trim().length > 0);
});
ui.chatInput.addEventListener("blur", () => typing.stop());

document.addEventListener("keydown", (event) => {
  if (event.defaultPrevented || ui.reportDialog.open || ui.devicesDialog.open || safety.open || gate.open) return;
  if (event.key === "Escape") {
    event.preventDefault();
    // The Esc that took the page out of full screen is the browser's.
    if (performance.now() - fullscreenLeftAt < 500) return;
    onEscape(event);
    return;
  }
  const target = event.target;
  const typingInField =
    target instanceof HTMLInputElement ||
    target instanceof HTMLTextAreaElement ||
    target instanceof HTMLSelectElement ||
    target?.isContentEditable;
  if (typingInField || event.ctrlKey || event.metaKey || event.altKey || !safety.shortcuts) return;
  if (!media.stream) return; // nothing to mute before the camera is on
  if (event.key === "m" || event.key === "M") toggleMic();
  else if (event.key === "v" || event.key === "V") toggleCamera();
  else if ((event.key === "b" || event.key === "B") && call) veil.toggle();
});

// During a chat, closing the tab (or reloading it) ends it: ask first.
window.addEventListener("beforeunload", (event) => {
  if (!match) return;
  event.preventDefault();
  event.returnValue = "";
});
window.addEventListener("online", () => signaling.retryNow());
window.addEventListener("pagehide", () => {
  if (match) storePair(match.pair); // a reload brings us back: "the same stranger"
  signaling.close();
});
window.addEventListener("pageshow", (event) => {
  // Back from the back/forward cache: the socket is gone, start afresh.
  if (event.persisted) location.reload();
});
document.addEventListener("visibilitychange", () => {
  // Animations stop while nobody can see them (the CSS reads data-visible).
  ui.body.dataset.visible = String(!document.hidden);
  if (!document.hidden) refreshOnline();
});
touchQuery.addEventListener("change", () => updateShortcutHints());
navigator.mediaDevices?.addEventListener?.("devicechange", () => refreshDevices());

setInterval(() => {
  if (!document.hidden) refreshOnline();
}, STATS_POLL_MS);
fillLanguagePicker();
refreshOnline();
ui.body.dataset.mode = currentMode();
ui.body.dataset.preview = "off";
ui.body.dataset.camera = "on";
ui.body.dataset.visible = String(!document.hidden);
flasher.base = t("page.title");
updateShortcutHints();
writeHeading();
writeFullscreen();
interests.render();
renderAddressPrivacy(ui.body.dataset.relayed === "true");
veil.reset(settings.blur);
setState("idle", () => t("status.idle"));
if (!safety.accepted) safety.show();

// A read-only window for tests and curious users (documented in docs/frontend.md).
window.omiro = Object.freeze({
  get state() {
    return state;
  },
  stateLog,
  reconnects,
  get searching() {
    return searching;
  },
  get sessionId() {
    return signaling.sessionId;
  },
  get matchId() {
    return match?.id ?? null;
  },
  get partnerId() {
    return match?.partner ?? null;
  },
  /** The current match's pair tag (the same for the same two networks), or null. */
  get pair() {
    return match?.pair ?? null;
  },
  get call() {
    return call;
  },
  get pc() {
    return call?.pc ?? null;
  },
  peerConnections: peerConnectionCounts,
  get getUserMediaCalls() {
    return media.getUserMediaCalls;
  },
  get gumCalled() {
    return media.getUserMediaCalls > 0;
  },
  get quality() {
    return lastQuality;
  },
  /** The liveness watches: what is silent now ("media", "server"), the media watch's state. */
  get link() {
    return {
      unstable: [...unstableLinks],
      media: mediaWatch?.state ?? null,
      resuming: resuming !== null,
      partnerAway,
      ticketsRenewed,
    };
  },
  get prefs() {
    return prefs;
  },
  get noticeAccepted() {
    return safety.accepted;
  },
  /** The page's language (its code): what the languages spoken start from. */
  get language() {
    return currentLanguage();
  },
  /** The languages stated in join_queue (codes). */
  get speaks() {
    return speaks.codes;
  },
  /** The current match's common languages (codes). */
  get commonLanguages() {
    return match?.commonLanguages ?? [];
  },
  /** The stranger's voice in a voice call: {level, speaking, everSpoke}. */
  get voice() {
    return { level: voiceMeter.level, speaking: voiceMeter.speaking, everSpoke: voiceMeter.everSpoke };
  },
  languages: Object.freeze(LANGUAGES.map((l) => l.code)),
  /** Seconds until the server lets us queue again after too many skips (0: not cooling down). */
  get cooldownS() {
    return Math.max(0, Math.ceil((cooldownUntil - performance.now()) / 1000));
  },
  /** The number the online count shows (the reader included), or null. */
  get online() {
    const value = ui.online.parentElement.dataset.online;
    return value === undefined ? null : Number(value);
  },
  signaling,
  /** The blur over the stranger's video: {blurred, reason, shownByUser}. */
  get veil() {
    return { blurred: veil.blurred, reason: veil.reason, shownByUser: veil.shownByUser };
  },
  /** The user's safety settings on this device. */
  get settings() {
    return { blur: settings.blur, filter: settings.filter, skipBlank: settings.skipBlank };
  },
  /** The nudity filter: state (off, loading, ready, error) and what it did. */
  get filter() {
    return {
      state: filterState,
      mode: filter?.mode ?? null,
      backend: filter?.backend ?? null,
      loadMs: filter?.loadMs ?? null,
      frames: filter?.frames ?? 0,
      classifyMs: [...(filter?.classifyMs ?? [])],
      modelMs: [...(filter?.modelMs ?? [])],
      lastScores: filter?.lastScores ?? null,
      flagged: filter?.flagged ?? false,
    };
  },
  /** The blank-video watch: {running, blank, reason, samples}. */
  get blankVideo() {
    return {
      running: blankWatch.running,
      blank: blankWatch.blank,
      reason: blankWatch.reason,
      samples: blankWatch.samples,
    };
  },
  /** What this page's camera reports itself as: {kind, name}. */
  get ownCamera() {
    return { ...ownCamera };
  },
  /** The devices in use: {video, audio} device ids. */
  get devices() {
    return { video: media.deviceId("video"), audio: media.deviceId("audio") };
  },
});

// Test-only hooks (docs/frontend.md): present only when a test's init script
// set window.__omiroTestHooks = true before the page loaded.
if (window.__omiroTestHooks === true) {
  window.__omiroTest = Object.freeze({
    /** Judge class probabilities as if the model had given them; false if the filter is not loaded. */
    filterVerdict(scores) {
      if (!filter) return false;
      filter.verdict(scores);
      return true;
    },
  });
}
