// The page's words: one message catalog per language (locales/<code>.json,
// chosen and fetched by boot.js), plurals and numbers by the browser's Intl.
//
// * t(key, params) gives a message; "{name}" in it is replaced by
//   params.name, and "{n}" by params.n formatted for the language. A message
//   may be plural: {"one": …, "other": …}, one entry per category that
//   Intl.PluralRules has for the language (Arabic has six).
// * In the markup, data-i18n="key" sets an element's text (the message may
//   hold <strong>, <em> and <kbd>, nothing else), and
//   data-i18n-attrs="aria-label=key title=key2" sets attributes. index.html
//   carries the English words, so English needs no work before the first paint.
// * setLanguage(code) fetches another catalog, translates the page again,
//   remembers the choice, and emits "change" on `languageEvents` (the page
//   re-renders what it wrote itself).
//
// Invariant: no user-facing string of the page is written anywhere but in
// the catalogs (a browser test renders every language and fails on a
// missing key or an English leftover).

const boot = window.omiroBoot;
const RICH = /(<(strong|em|kbd)>.*?<\/\2>)/;

let language = boot?.language ?? "en";
let catalog = {};
let plurals = new Intl.PluralRules(language);
let numbers = new Intl.NumberFormat(language);
const missing = new Set();

export const languageEvents = new EventTarget();

/** Every language of the page: [{code, name, rtl}]. */
export const LANGUAGES = Object.freeze(
  (boot?.languages ?? [["en", "English"]]).map(([code, name, dir]) =>
    Object.freeze({ code, name, rtl: dir === "rtl" }),
  ),
);

/** The page's language (its code, e.g. "pt"). */
export function currentLanguage() {
  return language;
}

async function fetchCatalog(code) {
  if (code === boot?.language && boot.catalog) {
    try {
      return await boot.catalog;
    } catch {
      /* fall through to a second try */
    }
  }
  return boot ? boot.load(code) : {};
}

/** Wait for the catalog boot.js started fetching, then translate the page. */
export async function loadLanguage() {
  try {
    catalog = await fetchCatalog(language);
  } catch (err) {
    // Unreachable catalog: English markup stays, as does the page.
    console.info("catalog unavailable:", err);
    if (language !== "en") {
      apply("en");
      catalog = await fetchCatalog("en").catch(() => ({}));
    }
  }
  translatePage();
  delete document.documentElement.dataset.translating;
}

/** Switch to another language now, and remember it on this device. */
export async function setLanguage(code) {
  if (!LANGUAGES.some((l) => l.code === code) || code === language) return;
  const next = await fetchCatalog(code);
  try {
    localStorage.setItem(boot?.STORAGE_KEY ?? "omiro.language", code);
  } catch {
    /* private mode: not remembered */
  }
  catalog = next;
  apply(code);
  translatePage();
  languageEvents.dispatchEvent(new CustomEvent("change", { detail: { language: code } }));
}

function apply(code) {
  language = code;
  plurals = new Intl.PluralRules(code);
  numbers = new Intl.NumberFormat(code);
  const root = document.documentElement;
  root.lang = code;
  root.dir = LANGUAGES.find((l) => l.code === code)?.rtl ? "rtl" : "ltr";
}

/** A message of the current language, with its parameters filled in. */
export function t(key, params = {}) {
  let message = catalog[key];
  if (message === undefined) {
    if (!missing.has(key)) {
      missing.add(key);
      console.warn(`omiro: no "${key}" in the ${language} catalog`);
    }
    return key;
  }
  if (typeof message === "object") {
    const n = Number(params.n ?? 0);
    message = message[plurals.select(n)] ?? message.other;
  }
  return message.replace(/\{(\w+)\}/g, (whole, name) => {
    if (!(name in params)) return whole;
    return name === "n" ? formatNumber(params.n) : String(params[name]);
  });
}

export function formatNumber(n) {
  return numbers.format(n);
}

/** "a, b and c" in the current language. */
export function formatList(items) {
  return new Intl.ListFormat(language, { style: "long", type: "conjunction" }).format(items);
}

export function formatDate(date) {
  return date.toLocaleString(language);
}

/** Put a message into an element: text, with only <strong>, <em> and <kbd> as markup. */
export function setRich(element, message) {
  const nodes = message
    .split(RICH)
    .filter((part, index) => index % 3 !== 2 && part !== "")
    .map((part) => {
      const match = /^<(strong|em|kbd)>(.*)<\/\1>$/s.exec(part);
      if (!match) return document.createTextNode(part);
      const element = document.createElement(match[1]);
      element.textContent = match[2];
      return element;
    });
  element.replaceChildren(...nodes);
}

/** Translate every marked element under `root`. */
export function translatePage(root = document) {
  for (const element of root.querySelectorAll("[data-i18n]")) {
    const message = t(element.dataset.i18n);
    if (element.textContent !== message.replace(/<\/?(strong|em|kbd)>/g, "")) {
      setRich(element, message);
    }
  }
  for (const element of root.querySelectorAll("[data-i18n-attrs]")) {
    for (const pair of element.dataset.i18nAttrs.trim().split(/\s+/)) {
      const [name, key] = pair.split("=");
      if (name && key) element.setAttribute(name, t(key));
    }
  }
}
