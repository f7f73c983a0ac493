// Omiro's page: the user's intent, the screen state, and the wiring between
// signaling (signaling.js), the call (call.js), the chat (chat.js), the
// devices (media.js), the interests field (interests.js) and the safety
// protections inside the call (safety.js, blank-video.js, and the nudity
// filter, nudity-filter.js, imported only when it is on).
//
// States (shown in body[data-state] and on the status line's data-state):
//   idle          nothing going on; Start is the one big button
//   starting      asking for the camera, fetching a session, opening the socket
//   waiting       in the queue ("Looking for someone…"), also right after a
//                 partner left or we pressed Next
//   connected     matched with a stranger (the call may still be connecting)
//   reconnecting  the socket dropped or the server is draining; we come back
//                 and rejoin the queue by ourselves
//   blocked       banned, or the devices were refused; a notice says what to do
//
// Invariant: `searching` is the user's wish to be in the queue or in a chat.
// Every path that (re)gains a ready socket while `searching` sends
// `join_queue`; every path that ends a match calls endCall(), which leaves no
// RTCPeerConnection, remote track or timer behind.

import { ErrorCode } from "./constants.js";
import { Signaling } from "./signaling.js";
import { Call, peerConnectionCounts } from "./call.js";
import { ChatView, TitleFlasher, TypingReporter } from "./chat.js";
import { LocalMedia, describeMediaError } from "./media.js";
import { InterestsField } from "./interests.js";
import { SafetyNotice } from "./notice.js";
import { TEXT as SAFETY_TEXT, SafetySettings, Veil, cameraKind } from "./safety.js";
import { BlankVideoWatch } from "./blank-video.js";
import { TEXT as LINK_TEXT, MediaWatch } from "./liveness.js";

const STATS_POLL_MS = 15_000;
const QUALITY_POLL_MS = 2_000;

const $ = (id) => document.getElementById(id);
const ui = {
  body: document.body,
  start: $("start"),
  next: $("next"),
  stop: $("stop"),
  report: $("report"),
  reportDialog: $("report-dialog"),
  textMode: $("text-mode"),
  status: $("status"),
  notice: $("notice"),
  noticeText: $("notice-text"),
  noticeActions: $("notice-actions"),
  remoteVideo: $("remote-video"),
  localVideo: $("local-video"),
  unmuteRemote: $("unmute-remote"),
  overlayCaption: $("overlay-caption"),
  quality: $("quality"),
  mute: $("mute"),
  camera: $("camera"),
  online: document.querySelector('[data-testid="online-count"] .online-text'),
  composer: $("composer"),
  chatInput: $("chat-input"),
  mediaControls: $("media-controls"),
  noticeCountdown: $("notice-countdown"),
  reportForm: $("report-form"),
  reportCancel: $("report-cancel"),
  openNotice: $("open-notice"),
  brand: document.querySelector(".brand"),
  addressPrivacy: $("address-privacy"),
  remoteCameraKind: $("remote-camera-kind"),
  localCameraKind: $("local-camera-kind"),
};

const signaling = new Signaling();
const media = new LocalMedia();
const flasher = new TitleFlasher();
const interests = new InterestsField({ input: $("interests"), chips: $("interest-chips") });
const chat = new ChatView({
  log: $("chat-log"),
  input: ui.chatInput,
  sendButton: $("chat-send"),
  typing: $("typing"),
  counter: $("char-count"),
});
const typing = new TypingReporter((on) => {
  if (!resuming && !partnerAway) signaling.send("typing", { typing: on });
});
const safety = new SafetyNotice({ dialog: $("welcome"), shortcuts: $("shortcuts") });
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

let state = "idle";
let searching = false;
let prefs = null; // what the server last heard from join_queue: {mode, interests}
let match = null; // {id, partner, commonInterests, shouldCall}
let call = null;
let micOn = true;
let cameraOn = true;
let qualityTimer = null;
let countdownTimer = null;
let lastQuality = null;
let partnerLeft = false; // the last match ended from the other side
let lastPartner = null; // the session id of the previous match's stranger
let startAfterNotice = false; // Start was pressed before the notice was accepted
let noticeHandlers = []; // what the notice's buttons do: [{label, action, primary, testid}]
let callNotice = null; // "filter" or "blank": the notice belongs to this match and ends with it
let filter = null; // the NudityFilter, once loaded
let filterState = "off"; // off, loading, ready, error
let ownCamera = { kind: "none", name: null };
let ownCameraTold = false; // the user heard once that their camera is a virtual one
let mediaWatch = null; // the MediaWatch of the current call
const unstableLinks = new Set(); // what is silent right now: "media", "server"
let connectedText = ""; // the status line of the current match, for when the link steadies
let resuming = null; // {ticket} while the call waits to take its match back after a reconnect
let resumeTimer = null;
let partnerAway = false; // the stranger's socket dropped; the server keeps the match for them
let outbox = []; // [{text, item}]: our lines typed while resuming, sent once it is back
let inFlight = []; // [{item, settled}]: our lines sent, not yet confirmed, oldest first
const RESUME_DEADLINE_MS = 60_000; // how long the page waits for its server to come back
const stateLog = [];
const reconnects = []; // {reason, delayMs} of every scheduled reconnection

// ---------------------------------------------------------------- state

function setState(next, text) {
  const focusBefore = document.activeElement;
  if (next !== state) stateLog.push(next);
  state = next;
  ui.body.dataset.state = next;
  ui.status.dataset.state = next;
  // Rewriting the same words would make screen readers say them again.
  if (text !== undefined && ui.status.textContent !== text) ui.status.textContent = text;
  const active = searching && next !== "blocked";
  ui.start.hidden = active;
  ui.next.hidden = !active;
  ui.stop.hidden = !active;
  // aria-disabled, not disabled: a disabled button would drop the keyboard
  // focus to the page whenever a match ends.
  ui.next.setAttribute("aria-disabled", String(next !== "connected"));
  ui.report.hidden = next !== "connected";
  ui.textMode.disabled = active;
  ui.body.dataset.active = String(active);
  if (next === "connected") {
    chat.setEnabled(true, "Say hi…");
  } else {
    chat.setEnabled(false, next === "waiting" ? "Waiting for a stranger…" : "Press Start to chat");
    chat.showTyping(false);
  }
  // Focus that was on the page itself (nothing chosen yet) is left alone.
  if (focusBefore && focusBefore !== document.body) rescueFocus();
}

/** Keyboard focus never falls to the page: if its element went away, move it on. */
function rescueFocus() {
  const focused = document.activeElement;
  if (ui.reportDialog.open || safety.open) return;
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
  return ui.textMode.checked ? "text" : "video";
}

function waitingText() {
  if (partnerLeft) return "Stranger left. Looking for someone new…";
  const tags = prefs?.interests ?? [];
  return tags.length
    ? `Looking for someone who likes ${listText(tags)}…`
    : "Looking for someone…";
}

function listText(items) {
  if (items.length <= 1) return items.join("");
  return `${items.slice(0, -1).join(", ")} and ${items[items.length - 1]}`;
}

// --------------------------------------------------------------- notices

/** Show a message with optional buttons: [{label, action, primary}]. */
function showNotice(text, actions = [], tone = "warn") {
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

async function start() {
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
  if (mode === "video") {
    setState("starting", "Allow your camera and microphone to start…");
    try {
      await media.open();
    } catch (err) {
      searching = false;
      setState("blocked", "Video chat needs your camera and microphone.");
      showNotice(describeMediaError(err), [
        { label: "Chat by text instead", primary: true, testid: "use-text", action: startTextInstead },
        { label: "Try again", action: () => start() },
      ]);
      return;
    }
    if (!searching) {
      media.close(); // Stop was pressed while the permission prompt was open
      return;
    }
    showLocalPreview();
    ownCamera = cameraKind(media.stream);
    ui.localCameraKind.hidden = ownCamera.kind !== "virtual";
    loadFilter();
  } else {
    media.close();
  }
  ui.body.dataset.mode = mode;
  setState("starting", "Connecting…");
  signaling.open();
  if (signaling.ready) joinQueue();
}

function startTextInstead() {
  ui.textMode.checked = true;
  ui.body.dataset.mode = "text";
  start();
}

function joinQueue() {
  const wanted = { mode: currentMode(), interests: interests.tags };
  if (signaling.send("join_queue", wanted)) {
    prefs = wanted;
    if (!match) setState("waiting", waitingText());
  }
}

function samePrefs(a, b) {
  return a && b && a.mode === b.mode && a.interests.join("\n") === b.interests.join("\n");
}

function next() {
  if (!searching || (state !== "connected" && state !== "waiting")) return;
  if (match) lastPartner = match.partner;
  const wanted = { mode: currentMode(), interests: interests.tags };
  const changed = !samePrefs(prefs, wanted);
  if (state === "waiting" && !changed) return; // already looking
  if (match) chat.addSystem("You skipped this stranger.");
  endCall();
  partnerLeft = false;
  if (changed) joinQueue();
  else signaling.send("next");
  // If the socket is down, the reconnection rejoins the queue by itself.
  setState("waiting", waitingText());
}

function stop() {
  if (!searching && state !== "starting") return;
  searching = false;
  lastPartner = null;
  partnerLeft = false;
  if (match) chat.addSystem("You ended the chat.");
  endCall();
  if (signaling.ready) signaling.send("leave_queue");
  else signaling.close(); // no need to keep retrying for someone who left
  media.close();
  hideLocalPreview();
  hideNotice();
  setState("idle", "Press Start to meet someone new.");
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
    chat.addSystem("That chat had already ended, so nothing was reported.", "warn");
    return;
  }
  if (!signaling.send("report", { reason })) {
    chat.addSystem("Not connected to the server, so the report could not be sent.", "warn");
    return;
  }
  lastPartner = null; // a reported stranger is never matched with us again
  chat.addSystem("Thanks. You reported this stranger and won't meet them again.", "good");
  endCall();
  // The server leaves us idle after a report; look for the next person.
  joinQueue();
  setState("waiting", waitingText());
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

function updateShortcutHints() {
  const on = safety.shortcuts;
  ui.mute.title = on ? "Mute microphone (M)" : "Mute microphone";
  ui.camera.title = on ? "Turn camera off (V)" : "Turn camera off";
  if (on) {
    ui.mute.setAttribute("aria-keyshortcuts", "M");
    ui.camera.setAttribute("aria-keyshortcuts", "V");
  } else {
    ui.mute.removeAttribute("aria-keyshortcuts");
    ui.camera.removeAttribute("aria-keyshortcuts");
  }
}

// ------------------------------------------------------------- the call

function showLocalPreview() {
  ui.localVideo.srcObject = media.stream;
  ui.localVideo.play().catch(() => {});
  media.setMicEnabled(micOn);
  media.setCameraEnabled(cameraOn);
  ui.body.dataset.preview = media.hasVideo ? "on" : "off";
  ui.mediaControls.inert = !media.hasVideo;
}

function hideLocalPreview() {
  ui.localVideo.srcObject = null;
  ui.body.dataset.preview = "off";
  ui.mediaControls.inert = true;
}

function beginCall(shouldCall) {
  call = new Call({
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
  });
  call.addEventListener("state", ({ detail }) => {
    if (call !== thisCall) return;
    ui.body.dataset.call = detail.state;
    if (thisCall.outcome?.outcome === "failed") ui.body.dataset.call = "failed";
    else if (detail.state === "failed" || detail.state === "disconnected") {
      ui.overlayCaption.textContent = "The video connection dropped. Trying to restore it…";
    }
  });
  call.addEventListener("outcome", ({ detail }) => {
    if (call !== thisCall || detail.outcome !== "failed") return;
    // Say so instead of spinning forever; the chat still works.
    const text =
      detail.reason === "refused" || detail.reason === "no-candidates"
        ? "Couldn't reach the relay server, so the video can't connect. Press Next to try someone else."
        : "The video couldn't connect. Press Next to try someone else.";
    ui.body.dataset.call = "failed";
    ui.overlayCaption.textContent = text;
    chat.addSystem(text, "warn");
  });
  call.addEventListener("state", ({ detail }) => {
    if (call === thisCall && detail.state === "connected") blankWatch.start();
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
  ui.overlayCaption.textContent = "Connecting video…";
  qualityTimer = setInterval(updateQuality, QUALITY_POLL_MS);
  veil.reset(settings.blur);
  if (filter && settings.filter) filter.watch(ui.remoteVideo);
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
      chat.addSystem(SAFETY_TEXT.filterFailed, "warn");
    });
}

function onNudity() {
  if (!match || !call) return;
  veil.blur("filter");
  showNotice(SAFETY_TEXT.filterFlagged, [
    {
      label: SAFETY_TEXT.filterReport,
      primary: true,
      testid: "filter-report",
      action: () => openReport("nudity"),
    },
    { label: SAFETY_TEXT.filterNext, testid: "filter-next", action: () => next() },
  ]);
  callNotice = "filter";
}

function onBlankVideo({ detail: { seconds } }) {
  if (!match || !call) return;
  if (settings.skipBlank) {
    chat.addSystem(SAFETY_TEXT.blankSkipped(seconds), "warn");
    next();
    return;
  }
  if (callNotice === "filter") return; // the filter's notice says more
  showNotice(SAFETY_TEXT.blankVideo(seconds), [
    { label: SAFETY_TEXT.blankNext, primary: true, testid: "blank-next", action: () => next() },
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
  setState("connected", LINK_TEXT.unstable);
  if (call) ui.overlayCaption.textContent = LINK_TEXT.unstableCaption;
}

function linkSteady(what) {
  if (!unstableLinks.delete(what) || unstableLinks.size > 0) return;
  delete ui.body.dataset.link;
  if (state === "connected") setState("connected", connectedText);
}

function forgetLink() {
  unstableLinks.clear();
  delete ui.body.dataset.link;
}

/** Nothing came from the stranger for the whole bound: end the call and say why. */
function callLost() {
  if (!match) return;
  const own = signaling.unstable; // our side went silent, not theirs
  chat.addSystem(own ? LINK_TEXT.ownLost : LINK_TEXT.callLost, "warn");
  signaling.send("peer_lost", { match_id: match.id });
  lastPartner = match.partner;
  endCall();
  flasher.notify("Connection lost");
  if (!searching) return;
  partnerLeft = false;
  setState("waiting", waitingText());
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
  setState("connected", LINK_TEXT.resumingServer);
}

function resumeFailed(text) {
  if (!resuming || !match) return;
  chat.addSystem(text, "warn");
  lastPartner = match.partner;
  endCall();
  if (!searching) return;
  setState("waiting", waitingText());
  joinQueue();
}

function endCall() {
  match = null;
  resuming = null;
  partnerAway = false;
  clearTimeout(resumeTimer);
  resumeTimer = null;
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
  filter?.unwatch();
  if (callNotice) hideNotice();
  if (call) {
    call.close();
    call = null;
  }
  ui.remoteVideo.pause();
  ui.remoteVideo.srcObject = null;
  ui.remoteVideo.removeAttribute("src");
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
  if (!quality) {
    ui.quality.hidden = true;
    return;
  }
  const rtt = quality.rttMs;
  const grade = rtt === null ? "ok" : rtt < 150 ? "good" : rtt < 400 ? "ok" : "poor";
  ui.quality.dataset.grade = grade;
  ui.quality.dataset.path = quality.path;
  ui.quality.textContent = `${rtt === null ? "–" : rtt} ms · ${quality.path}`;
  ui.quality.title =
    quality.path === "relayed"
      ? "Round-trip time; the call goes through a relay server"
      : "Round-trip time; the call goes directly between you";
  ui.quality.hidden = false;
}

// ------------------------------------------------------ server messages

const handlers = {
  queued() {
    if (searching && !match) setState("waiting", waitingText());
  },

  match_found(data) {
    if (!searching) return; // crossed our leave_queue; the server ends it
    endCall();
    partnerLeft = false;
    match = {
      id: data.match_id ?? null,
      ticket: typeof data.ticket === "string" ? data.ticket : null,
      partner: data.partner ?? null,
      commonInterests: Array.isArray(data.common_interests) ? data.common_interests.map(String) : [],
      shouldCall: data.should_call === true,
    };
    const common = match.commonInterests;
    const mode = data.mode === "text" ? "text" : "video";
    const same = match.partner !== null && match.partner === lastPartner;
    if (same) {
      // A quiet server: the only other person here is the one we just left.
      chat.addSystem(
        "No one else is here right now, so you're back with the same stranger. Press Next again to keep looking.",
        "warn",
      );
    } else {
      chat.clear();
      chat.addSystem(
        mode === "text"
          ? "You're now chatting with a random stranger. Say hi!"
          : "You're now talking with a random stranger. Say hi!",
        "good",
      );
    }
    if (common.length) chat.addSystem(`You both like ${listText(common)}.`, "good");
    connectedText = same
      ? "You're back with the same stranger · no one else is here right now"
      : common.length
        ? `You're talking with a stranger · you both like ${listText(common)}`
        : "You're talking with a stranger";
    setState("connected", connectedText);
    if (mode === "video" && media.stream) {
      signaling.send("camera_kind", { kind: ownCamera.kind });
      if (ownCamera.kind === "virtual" && !ownCameraTold) {
        ownCameraTold = true;
        chat.addSystem(SAFETY_TEXT.ownVirtual(ownCamera.name), "warn");
      }
      beginCall(match.shouldCall);
    }
    flasher.notify("Stranger found!");
    chat.focus();
    refreshOnline();
  },

  resuming() {
    if (resuming && match) setState("connected", LINK_TEXT.resumingPartner);
  },

  partner_away() {
    if (!match || resuming) return;
    partnerAway = true;
    ui.body.dataset.link = "partner-away";
    setState("connected", LINK_TEXT.partnerAway);
  },

  resumed(data) {
    if (!match || (!resuming && !partnerAway)) return; // we had moved on; the server ends it
    partnerAway = false;
    match.id = data.match_id ?? match.id;
    match.partner = data.partner ?? match.partner;
    match.ticket = typeof data.ticket === "string" ? data.ticket : null;
    resuming = null;
    clearTimeout(resumeTimer);
    resumeTimer = null;
    delete ui.body.dataset.link;
    unstableLinks.delete("server");
    if (unstableLinks.size === 0) setState("connected", connectedText);
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
    chat.addSystem(
      reason === "next"
        ? "Stranger skipped to someone else."
        : reason === "timeout"
          ? "Stranger's connection timed out."
          : reason === "reported"
            ? "The chat was ended."
            : reason === "lost"
              ? signaling.unstable
                ? LINK_TEXT.ownLost
                : LINK_TEXT.partnerLost
              : "Stranger has disconnected.",
      "warn",
    );
    lastPartner = match.partner;
    endCall();
    flasher.notify("Stranger left");
    if (!searching) return;
    partnerLeft = true;
    setState("waiting", waitingText());
    joinQueue();
  },

  chat(data) {
    if (!match || typeof data.message !== "string") return;
    chat.showTyping(false);
    chat.addMessage("stranger", data.message);
    flasher.notify("New message");
  },

  typing(data) {
    if (match) chat.showTyping(data.typing === true);
  },

  camera_kind(data) {
    if (!match || !call) return;
    if (data.kind === "virtual") {
      ui.remoteCameraKind.hidden = false;
      chat.addSystem(SAFETY_TEXT.strangerVirtual, "warn");
    } else if (data.kind === "none") {
      chat.addSystem(SAFETY_TEXT.strangerNoCamera);
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
        if (data.op === "join_queue") showNotice(`The server refused to queue you: ${data.message}`);
        break;
      case ErrorCode.MESSAGE_TOO_LONG:
        chat.addSystem(`That message is too long (at most ${chat.maxLength} characters).`, "warn");
        break;
      case ErrorCode.RATE_LIMITED:
        chat.addSystem("You're going a bit fast. Wait a moment and try again.", "warn");
        if (data.op === "next" && searching && !match) joinQueue();
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
          showNotice(`The server refused to queue you: ${data.message || data.code}`);
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
  renderAddressPrivacy(hello?.ice_transport_policy === "relay");
  hideNotice();
  if (resuming && match) signaling.send("resume", { ticket: resuming.ticket });
  else if (searching) joinQueue();
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
    const text =
      reason === "silent" ? LINK_TEXT.ownLost : "Lost the connection to the server; this chat has ended.";
    chat.addSystem(text, "warn");
    lastPartner = match.partner;
  }
  endCall();
  partnerLeft = false;
  if (!searching) return;
  const what =
    reason === "draining"
      ? "The server is restarting."
      : reason === "rate_limited"
        ? "Too many new connections from your network."
        : reason === "unreachable"
          ? navigator.onLine === false
            ? "You seem to be offline."
            : "Can't reach the server."
          : "Lost the connection to the server.";
  setState("reconnecting", `${what} Reconnecting…`);
  showOffline();
  // The message is said once; only the (unannounced) countdown ticks, and
  // the Retry button stays the same element, so focus on it is kept.
  showNotice(what, [{ label: "Retry now", action: () => signaling.retryNow(), testid: "retry" }], "info");
  ui.noticeCountdown.hidden = false;
  countdown(delayMs, (left) => {
    ui.noticeCountdown.textContent = left > 0 ? `Trying again in ${left} s…` : "Reconnecting…";
  });
});

signaling.addEventListener("unstable", () => linkUnstable("server"));
signaling.addEventListener("steady", () => linkSteady("server"));

signaling.addEventListener("banned", ({ detail: { message, until } }) => {
  searching = false;
  endCall();
  media.close();
  hideLocalPreview();
  const when = until ? ` until ${new Date(until * 1000).toLocaleString()}` : "";
  setState("blocked", "You can't use Omiro right now.");
  showNotice(`You have been banned from Omiro${when}.${message ? ` ${message}` : ""}`, [], "error");
  ui.start.disabled = true;
  ui.body.dataset.banned = "true";
});

signaling.addEventListener("closed", () => {
  if (searching) return;
  endCall();
});

// ------------------------------------------------------------ online count

async function refreshOnline() {
  if (state === "reconnecting") {
    showOffline(); // never "3 online" beside "Can't reach the server"
    return;
  }
  try {
    const response = await fetch(new URL("stats", document.baseURI), { cache: "no-store" });
    if (!response.ok) throw new Error(String(response.status));
    const stats = await response.json();
    const online = Number(stats.online) || 0;
    ui.online.textContent = `${online.toLocaleString()} online`;
    ui.online.parentElement.dataset.online = String(online);
  } catch {
    showOffline();
  }
}

function showOffline() {
  ui.online.textContent = "offline";
  delete ui.online.parentElement.dataset.online;
}

// ------------------------------------------------------------------ wiring

ui.start.addEventListener("click", () => start());
ui.next.addEventListener("click", () => next());
ui.stop.addEventListener("click", () => stop());
ui.report.addEventListener("click", () => openReport());
ui.mute.addEventListener("click", () => toggleMic());
ui.camera.addEventListener("click", () => toggleCamera());
ui.remoteVideo.addEventListener("playing", () => {
  if (call) ui.body.dataset.media = "playing";
});
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
ui.textMode.addEventListener("change", () => {
  ui.body.dataset.mode = currentMode();
});
interests.addEventListener("change", () => {
  // While only waiting, new interests take effect at once.
  if (searching && state === "waiting" && !match) joinQueue();
});

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  sendChat();
});
ui.chatInput.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    sendChat();
  }
});
ui.chatInput.addEventListener("input", () => {
  if (match) typing.keystroke(ui.chatInput.value.trim().length > 0);
});
ui.chatInput.addEventListener("blur", () => typing.stop());

document.addEventListener("keydown", (event) => {
  if (event.defaultPrevented || ui.reportDialog.open || safety.open) return;
  if (event.key === "Escape") {
    event.preventDefault();
    next();
    return;
  }
  const target = event.target;
  const typingInField =
    target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement || target?.isContentEditable;
  if (typingInField || event.ctrlKey || event.metaKey || event.altKey || !safety.shortcuts) return;
  if (!media.stream) return; // nothing to mute before the camera is on
  if (event.key === "m" || event.key === "M") toggleMic();
  else if (event.key === "v" || event.key === "V") toggleCamera();
  else if ((event.key === "b" || event.key === "B") && call) veil.toggle();
});

window.addEventListener("online", () => signaling.retryNow());
window.addEventListener("pagehide", () => signaling.close());
window.addEventListener("pageshow", (event) => {
  // Back from the back/forward cache: the socket is gone, start afresh.
  if (event.persisted) location.reload();
});
document.addEventListener("visibilitychange", () => {
  // Animations stop while nobody can see them (the CSS reads data-visible).
  ui.body.dataset.visible = String(!document.hidden);
  if (!document.hidden) refreshOnline();
});

setInterval(() => {
  if (!document.hidden) refreshOnline();
}, STATS_POLL_MS);
refreshOnline();
ui.body.dataset.mode = currentMode();
ui.body.dataset.preview = "off";
ui.body.dataset.camera = "on";
ui.body.dataset.visible = String(!document.hidden);
updateShortcutHints();
renderAddressPrivacy(ui.body.dataset.relayed === "true");
veil.reset(settings.blur);
setState("idle", "Press Start to meet someone new.");
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
    };
  },
  get prefs() {
    return prefs;
  },
  get noticeAccepted() {
    return safety.accepted;
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
