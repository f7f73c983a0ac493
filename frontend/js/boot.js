// Runs in <head>, before the first paint (a classic script, not a module):
// picks the page's language, sets <html lang dir>, and starts fetching that
// language's catalog (locales/<code>.json) at once, so it arrives while the
// modules load. A language other than English hides the page (CSS:
// html[data-translating]) until i18n.js has put its words in; the CSS shows
// it anyway after a few seconds, so a lost catalog never leaves it blank.
//
// The languages are listed here and nowhere else in the code (docs/frontend.md,
// "Adding a language"): code, name in that language, and "rtl" for a script
// written right to left.
(() => {
  const LANGUAGES = [
    ["en", "English"],
    ["es", "Español"],
    ["pt", "Português"],
    ["fr", "Français"],
    ["de", "Deutsch"],
    ["ar", "العربية", "rtl"],
  ];
  const STORAGE_KEY = "omiro.language";
  const codes = LANGUAGES.map(([code]) => code);
  let stored = null;
  try {
    stored = localStorage.getItem(STORAGE_KEY);
  } catch {
    /* storage blocked: follow the browser */
  }
  // The choice made with the picker, then the browser's preferred languages
  // ("pt-BR" is served "pt"), then English.
  let language = "en";
  for (const tag of [stored, ...(navigator.languages ?? [navigator.language])]) {
    if (!tag) continue;
    const lower = String(tag).toLowerCase();
    const primary = lower.split("-")[0];
    if (codes.includes(lower) || codes.includes(primary)) {
      language = codes.includes(lower) ? lower : primary;
      break;
    }
  }
  const root = document.documentElement;
  root.lang = language;
  root.dir = LANGUAGES.find(([code]) => code === language)[2] === "rtl" ? "rtl" : "ltr";
  if (language !== "en") root.dataset.translating = "true";
  const load = (code) =>
    fetch(new URL(`locales/${code}.json`, document.baseURI), { credentials: "same-origin" }).then(
      (response) => {
        if (!response.ok) throw new Error(`catalog ${code}: HTTP ${response.status}`);
        return response.json();
      },
    );
  const catalog = load(language);
  catalog.catch(() => {}); // i18n.js handles a failure; never an unhandled rejection
  window.omiroBoot = Object.freeze({ languages: LANGUAGES, language, catalog, load, STORAGE_KEY });
})();
