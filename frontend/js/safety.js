// Safety inside the call, the parts every page loads (docs/safety.md):
//
// * SafetySettings: the user's choices on this device (blur, nudity filter,
//   skip blank cameras), each falling back to the operator's default that the
//   server stamps on <body> (data-blur-remote, data-nudity-filter).
// * Veil: the stranger's video starts blurred (a CSS blur on the <video>, not
//   a tint) until the user shows it; sound is never held back. The filter can
//   blur it again.
// * cameraKind(): whether a video track's label names a known virtual camera.
//
// Invariant: the veil never stops the audio and never hides Next or Report;
// it only changes the <video>'s filter and the overlay above it.
//
// Every string the user sees is in TEXT, each from the message catalog
// (i18n.js).

import { t } from "./i18n.js";

export const TEXT = Object.freeze({
  get veilDefault() {
    return t("veil.default");
  },
  get veilFilter() {
    return t("veil.filter");
  },
  get announceShown() {
    return t("veil.announceShown");
  },
  get announceBlurred() {
    return t("veil.announceBlurred");
  },
  get addressHidden() {
    return t("safety.addressHidden");
  },
  get addressVisible() {
    return t("safety.addressVisible");
  },
  get filterFlagged() {
    return t("safety.filterFlagged");
  },
  get filterReport() {
    return t("action.report");
  },
  get filterNext() {
    return t("action.next");
  },
  get filterFailed() {
    return t("safety.filterFailed");
  },
  blankVideo: (seconds) => t("safety.blankVideo", { n: seconds }),
  blankSkipped: (seconds) => t("safety.blankSkipped", { n: seconds }),
  get blankNext() {
    return t("action.next");
  },
  ownVirtual: (name) => t("safety.ownVirtual", { name: name ?? t("safety.virtualCameraName") }),
  get strangerVirtual() {
    return t("safety.strangerVirtual");
  },
  get strangerNoCamera() {
    return t("safety.strangerNoCamera");
  },
});

// Known virtual cameras, matched case-insensitively inside a track's label:
// [pattern, the name shown (null: "a virtual camera" in the page's
// language)]. Whole product names only: a short pattern such
// as "vcam" could match a real webcam's name.
export const VIRTUAL_CAMERAS = Object.freeze([
  ["obs virtual camera", "OBS Virtual Camera"],
  ["obs-camera", "OBS Virtual Camera"],
  ["obs camera", "OBS Virtual Camera"],
  ["manycam", "ManyCam"],
  ["snap camera", "Snap Camera"],
  ["xsplit", "XSplit VCam"],
  ["e2esoft", "e2eSoft VCam"],
  ["splitcam", "SplitCam"],
  ["camtwist", "CamTwist"],
  ["youcam", "YouCam"],
  ["virtual camera", null],
  ["virtual cam", null],
  ["v4l2loopback", "v4l2loopback"],
  ["dummy video device", "v4l2loopback"],
]);

const KEYS = Object.freeze({
  blur: "omiro.blur",
  filter: "omiro.nudity-filter",
  skipBlank: "omiro.skip-blank",
});

function load(key) {
  try {
    return localStorage.getItem(key);
  } catch {
    return null; // storage blocked: the operator's defaults apply
  }
}

function store(key, value) {
  try {
    localStorage.setItem(key, value);
  } catch {
    /* private mode: not remembered */
  }
}

/** The kind of camera a stream sends from: {kind: "camera"|"virtual"|"none", name}. */
export function cameraKind(stream) {
  const track = stream?.getVideoTracks()[0];
  if (!track) return { kind: "none", name: null };
  const label = (track.label || "").toLowerCase();
  for (const [pattern, name] of VIRTUAL_CAMERAS) {
    if (label.includes(pattern)) return { kind: "virtual", name };
  }
  return { kind: "camera", name: null };
}

/**
 * The user's safety choices, remembered in localStorage ("on"/"off"); a
 * choice never made follows the operator's default from <body data-…>.
 * Each checkbox changes its setting at once and emits "change" {name, on}.
 */
export class SafetySettings extends EventTarget {
  #defaults;
  #boxes;

  constructor({ body, blur, filter, skipBlank }) {
    super();
    this.#defaults = {
      blur: body.dataset.blurRemote !== "false",
      filter: body.dataset.nudityFilter === "true",
      skipBlank: false,
    };
    this.#boxes = { blur, filter, skipBlank };
    for (const [name, box] of Object.entries(this.#boxes)) {
      box.checked = this.#get(name);
      box.addEventListener("change", () => {
        store(KEYS[name], box.checked ? "on" : "off");
        this.dispatchEvent(new CustomEvent("change", { detail: { name, on: box.checked } }));
      });
    }
  }

  #get(name) {
    const stored = load(KEYS[name]);
    return stored === null ? this.#defaults[name] : stored === "on";
  }

  /** Blur the stranger's video until shown. */
  get blur() {
    return this.#boxes.blur.checked;
  }

  /** Run the on-device nudity filter. */
  get filter() {
    return this.#boxes.filter.checked;
  }

  /** Skip a stranger whose video shows nothing. */
  get skipBlank() {
    return this.#boxes.skipBlank.checked;
  }
}

/**
 * The blur over the stranger's video and its two controls: "Show video" on
 * the veil, "Blur video" on the stage once shown. Emits "change" {blurred,
 * reason} whenever the state changes; the state is also written to
 * body[data-veil] and the <video>'s data-blurred.
 */
export class Veil extends EventTarget {
  #ui;
  blurred = false;
  reason = null; // "default" (the setting) or "filter", while blurred
  shownByUser = false; // this call's video was shown by the user

  constructor({ body, video, veil, text, show, blur, announce }) {
    super();
    this.#ui = { body, video, veil, text, show, blur, announce };
    show.addEventListener("click", () => this.show({ byUser: true }));
    blur.addEventListener("click", () => this.blur("default", { byUser: true }));
    this.#render(false);
  }

  /** A new call: blurred or not, as the user's setting says. */
  reset(blurred) {
    this.shownByUser = false;
    this.blurred = blurred;
    this.reason = blurred ? "default" : null;
    this.#render(false);
  }

  show({ byUser = false } = {}) {
    if (!this.blurred) return;
    const hadFocus = document.activeElement === this.#ui.show;
    if (byUser) this.shownByUser = true;
    this.blurred = false;
    this.reason = null;
    this.#render(byUser);
    if (hadFocus) this.#ui.blur.focus({ preventScroll: true });
  }

  blur(reason = "default", { byUser = false } = {}) {
    if (this.blurred && this.reason === reason) return;
    const hadFocus = document.activeElement === this.#ui.blur;
    this.blurred = true;
    this.reason = reason;
    this.#render(byUser);
    if (hadFocus) this.#ui.show.focus({ preventScroll: true });
  }

  /** Write the words again (the page's language changed). */
  refresh() {
    this.#render(false);
  }

  toggle() {
    if (this.blurred) this.show({ byUser: true });
    else this.blur("default", { byUser: true });
  }

  #render(announce) {
    const { body, video, veil, text, show, blur } = this.#ui;
    body.dataset.veil = this.blurred ? "on" : "off";
    video.dataset.blurred = String(this.blurred);
    veil.dataset.reason = this.reason ?? "";
    const words = this.reason === "filter" ? TEXT.veilFilter : TEXT.veilDefault;
    if (text.textContent !== words) text.textContent = words;
    show.hidden = !this.blurred;
    blur.hidden = this.blurred;
    if (announce) {
      this.#ui.announce.textContent = this.blurred ? TEXT.announceBlurred : TEXT.announceShown;
    }
    this.dispatchEvent(
      new CustomEvent("change", { detail: { blurred: this.blurred, reason: this.reason } }),
    );
  }
}
