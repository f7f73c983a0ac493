// The moderator console: sign-in, the report queue, a report's evidence,
// one-click actions, bans, the live view and (for admins) the audit log.
//
// It talks only to the server's /admin API, with the session cookie the
// sign-in sets (HttpOnly: this script never sees it) and the CSRF token the
// sign-in answers, sent on every request that changes something. Everything
// a stranger typed (transcripts, reasons) and everything a moderator typed
// (notes) is put on the page as text (textContent), never as HTML.

const REFRESH_MS = 5000;
const API = "admin/";

const $ = (id) => document.getElementById(id);

const CATEGORY_LABELS = {
  minor: "Possible minor",
  nudity: "Nudity",
  harassment: "Harassment",
  spam: "Spam",
  other: "Other",
};

const state = {
  me: null, // {name, role, csrf, moderator_max_ban_s}
  selected: null, // the report id shown in the evidence panel
  evidence: null,
  timer: 0,
  raid: null, // what GET raid answered (admins)
};

class SignedOut extends Error {}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") {
    headers["Content-Type"] = "application/json";
    if (state.me) headers["X-CSRF-Token"] = state.me.csrf;
  }
  const response = await fetch(API + path, {
    method,
    headers,
    body: method === "GET" ? undefined : JSON.stringify(body ?? {}),
    credentials: "same-origin",
    cache: "no-store",
  });
  if (response.status === 401 && path !== "session") throw new SignedOut();
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  return { ok: response.ok, status: response.status, data };
}

function announce(text) {
  const region = $("announce");
  region.textContent = "";
  // A fresh text node each time, so the same words are announced again.
  requestAnimationFrame(() => {
    region.textContent = text;
  });
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

// Address groups are shown truncated: enough to tell them apart, not a full address.
export function truncateGroup(group) {
  if (!group) return "unknown";
  if (group.includes(":")) {
    const [address, prefix] = group.split("/");
    const parts = address.split(":").filter((p) => p !== "");
    return `${parts.slice(0, 3).join(":")}:…${prefix ? "/" + prefix : ""}`;
  }
  const [address, prefix] = group.split("/");
  const octets = address.split(".");
  return `${octets.slice(0, 3).join(".")}.…${prefix ? "/" + prefix : ""}`;
}

function when(unix) {
  return unix ? new Date(unix * 1000).toLocaleString() : "";
}

function length(seconds) {
  if (seconds === null || seconds === undefined) return "unknown";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)} h`;
  return `${Math.round(seconds / 86400)} days`;
}

function describeState(status) {
  const by = status.by ? ` by ${status.by}` : "";
  switch (status.state) {
    case "claimed":
      return `Claimed${by}`;
    case "actioned":
      return `Actioned${by}: ${status.action}`;
    case "dismissed":
      return `Dismissed${by}${status.action ? `: ${status.action}` : ""}`;
    default:
      return "Open";
  }
}

// -- signing in and out ---------------------------------------------------------

function show(view) {
  document.body.dataset.view = view;
  $("signin").hidden = view !== "signin";
  $("desk").hidden = view !== "desk";
  $("account").hidden = view !== "desk";
}

function enterDesk(me) {
  state.me = me;
  document.body.dataset.role = me.role;
  $("who-name").textContent = me.name;
  $("who-role").textContent = me.role === "admin" ? "(admin)" : "(moderator)";
  $("audit").hidden = me.role !== "admin";
  $("entry").hidden = me.role !== "admin";
  for (const option of $("ban-duration").options) {
    const seconds = option.value === "" ? Infinity : Number(option.value);
    option.hidden = me.role !== "admin" && seconds > me.moderator_max_ban_s;
    option.disabled = option.hidden;
  }
  show("desk");
  refresh();
  clearInterval(state.timer);
  state.timer = setInterval(() => {
    if (document.visibilityState === "visible") refresh();
  }, REFRESH_MS);
}

function signedOut(message) {
  clearInterval(state.timer);
  state.me = null;
  state.selected = null;
  document.body.dataset.role = "";
  $("invite-made").hidden = true;
  $("invite-link").value = "";
  $("evidence").hidden = true;
  show("signin");
  $("signin-error").textContent = message || "";
  $("signin-name").focus();
}

async function signIn(event) {
  event.preventDefault();
  const name = $("signin-name").value.trim();
  const password = $("signin-password").value;
  const error = $("signin-error");
  if (!name || !password) {
    error.textContent = "Enter your account name and password.";
    return;
  }
  error.textContent = "";
  const answer = await api("POST", "session", { name, password });
  $("signin-password").value = "";
  if (!answer.ok) {
    error.textContent =
      answer.status === 429
        ? `Too many attempts. Try again in ${answer.data.retry_after} seconds.`
        : "Wrong account name or password.";
    return;
  }
  const me = await api("GET", "session");
  enterDesk(me.data);
  announce(`Signed in as ${me.data.name}.`);
  $("main").focus();
}

async function signOut() {
  try {
    await api("DELETE", "session");
  } catch (err) {
    if (!(err instanceof SignedOut)) throw err;
  }
  signedOut("You are signed out.");
}

// -- the live view, the queue, bans, the audit log ------------------------------

async function refresh() {
  try {
    await Promise.all([
      refreshLive(),
      refreshQueue(),
      refreshBans(),
      refreshAudit(),
      refreshRaid(),
      refreshInvites(),
    ]);
    if (state.selected !== null) await loadEvidence(state.selected, { quiet: true });
  } catch (err) {
    if (err instanceof SignedOut) signedOut("Your session ended: sign in again.");
    else throw err;
  }
}

async function refreshLive() {
  const { data } = await api("GET", "live");
  $("live-online").textContent = data.online;
  $("live-waiting").textContent = data.waiting;
  $("live-matches").textContent = data.matches_per_minute;
  $("live-calls").textContent =
    data.call_success === null ? "no calls" : `${Math.round(data.call_success * 100)} %`;
  $("live-reports").textContent = data.reports_last_hour;
  $("live-open").textContent = data.open_reports;
  $("live-bans").textContent = data.active_bans;
  $("live-updated").textContent = `Updated ${new Date().toLocaleTimeString()}.`;
}

async function refreshQueue() {
  const { data } = await api("GET", "queue");
  const list = $("queue-list");
  const focusedId = document.activeElement?.dataset?.report;
  list.replaceChildren(
    ...data.reports.map((report) => {
      const item = el("li", undefined, `queue-item category-${report.category}`);
      const button = el("button", undefined, "queue-button");
      button.type = "button";
      button.dataset.report = String(report.id);
      button.dataset.testid = "queue-item";
      button.setAttribute("aria-current", String(report.id === state.selected));
      const label = CATEGORY_LABELS[report.category] ?? report.category;
      const title = el("span", `#${report.id} ${label}`, "queue-title");
      const reporters = report.reporters === 1 ? "1 reporter" : `${report.reporters} reporters`;
      const details = [truncateGroup(report.reported_ip), reporters, when(report.at)];
      if (report.status.autoban) details.push("auto-banned");
      details.push(describeState(report.status));
      const meta = el("span", details.join(" · "), "queue-meta");
      button.append(title, meta);
      button.addEventListener("click", () => loadEvidence(report.id));
      item.append(button);
      return item;
    }),
  );
  $("queue-empty").hidden = data.reports.length > 0;
  if (focusedId) list.querySelector(`[data-report="${CSS.escape(focusedId)}"]`)?.focus();
}

async function refreshBans() {
  const search = $("bans-search").value.trim();
  const { data } = await api("GET", "bans" + (search ? `?q=${encodeURIComponent(search)}` : ""));
  const rows = data.bans.map((ban) => {
    const row = el("tr");
    row.append(
      el("td", ban.target),
      el("td", ban.until === null ? "permanent" : when(ban.until)),
      el("td", ban.reason),
      el("td", ban.by || "—"),
    );
    const cell = el("td");
    const liftable =
      state.me.role === "admin" ||
      (ban.until !== null && ban.until - ban.created_at <= state.me.moderator_max_ban_s + 1);
    if (liftable) {
      const lift = el("button", "Lift", "btn btn-small btn-ghost");
      lift.type = "button";
      lift.setAttribute("aria-label", `Lift the ban of ${ban.target}`);
      lift.addEventListener("click", () => liftBan(ban.target));
      cell.append(lift);
    }
    row.append(cell);
    return row;
  });
  if (rows.length === 0) {
    const row = el("tr");
    const cell = el("td", search ? "No ban matches." : "No bans in force.");
    cell.colSpan = 5;
    row.append(cell);
    rows.push(row);
  }
  $("bans-body").replaceChildren(...rows);
}

async function refreshAudit() {
  if (state.me?.role !== "admin") return;
  const { data } = await api("GET", "audit?limit=50");
  $("audit-body").replaceChildren(
    ...data.entries.map((entry) => {
      const row = el("tr");
      row.append(
        el("td", when(entry.at)),
        el("td", entry.actor),
        el("td", entry.action.replace("_", " ")),
        el("td", entry.target),
        el("td", entry.report_id ? `#${entry.report_id}` : ""),
        el("td", entry.note),
      );
      return row;
    }),
  );
}

// -- who may come in: raid mode and invites (admins) -----------------------------

async function refreshRaid() {
  if (state.me?.role !== "admin") return;
  const { data } = await api("GET", "raid");
  showRaid(data);
}

function showRaid(raid) {
  state.raid = raid;
  const what = raid.pause ? "new chats are paused" : "newcomers solve harder proof of work";
  $("raid-state").textContent = raid.on
    ? `On since ${when(raid.since)} by ${raid.by}: ${what}; newcomers are told to come back in ${length(raid.retry_after_s)}.`
    : "Off.";
  $("raid-toggle").textContent = raid.on ? "Turn raid mode off" : "Turn raid mode on";
  $("raid-options").hidden = raid.on;
  $("raid-retry").closest(".field").hidden = raid.on;
}

async function toggleRaid(event) {
  event.preventDefault();
  const on = !state.raid?.on;
  const body = on
    ? { on, pause: $("raid-pause").checked, retry_after_s: Number($("raid-retry").value) }
    : { on };
  try {
    const answer = await api("PUT", "raid", body);
    if (!answer.ok) {
      $("raid-error").textContent = answer.data?.message ?? `Refused (${answer.status}).`;
      return;
    }
    $("raid-error").textContent = "";
    showRaid(answer.data);
    announce(on ? "Raid mode is on." : "Raid mode is off.");
    $("raid-toggle").focus();
    await refreshAudit();
  } catch (err) {
    if (err instanceof SignedOut) signedOut("Your session ended: sign in again.");
    else throw err;
  }
}

async function refreshInvites() {
  if (state.me?.role !== "admin") return;
  const { data } = await api("GET", "invites");
  const focused = document.activeElement?.dataset?.invite;
  const now = Date.now() / 1000;
  const rows = data.invites.map((invite) => {
    const row = el("tr");
    const expired = invite.expires_at <= now;
    row.append(
      el("td", invite.id),
      el("td", `${invite.left} of ${invite.uses}`),
      el("td", expired ? `expired ${when(invite.expires_at)}` : when(invite.expires_at)),
      el("td", invite.by || "—"),
      el("td", invite.note),
    );
    const cell = el("td");
    if (!expired && invite.left > 0) {
      const revoke = el("button", "Revoke", "btn btn-small btn-ghost");
      revoke.type = "button";
      revoke.dataset.invite = invite.id;
      revoke.setAttribute("aria-label", `Revoke the invite ${invite.id}`);
      revoke.addEventListener("click", () => revokeInvite(invite.id));
      cell.append(revoke);
    }
    row.append(cell);
    return row;
  });
  if (rows.length === 0) {
    const row = el("tr");
    const cell = el("td", "No invites.");
    cell.colSpan = 6;
    row.append(cell);
    rows.push(row);
  }
  $("invites-body").replaceChildren(...rows);
  if (focused) $("invites-body").querySelector(`[data-invite="${CSS.escape(focused)}"]`)?.focus();
}

async function createInvite(event) {
  event.preventDefault();
  const uses = Number($("invite-uses").value);
  if (!Number.isInteger(uses) || uses < 1 || uses > 1000000) {
    $("invite-error").textContent = "People it lets in: a whole number from 1 to 1000000.";
    $("invite-uses").focus();
    return;
  }
  const body = {
    uses,
    expires_s: Number($("invite-expires").value),
    note: $("invite-note").value.trim(),
  };
  try {
    const answer = await api("POST", "invites", body);
    if (!answer.ok) {
      $("invite-error").textContent = answer.data?.message ?? `Refused (${answer.status}).`;
      return;
    }
    $("invite-error").textContent = "";
    $("invite-note").value = "";
    // The code is shown this once: the server keeps only its hash.
    const link = new URL(`./?invite=${encodeURIComponent(answer.data.code)}`, document.baseURI);
    $("invite-link").value = link.href;
    $("invite-made").hidden = false;
    announce(`Invite ${answer.data.invite.id} created. Its link is shown only now.`);
    $("invite-link").focus();
    $("invite-link").select();
    await Promise.all([refreshInvites(), refreshAudit()]);
  } catch (err) {
    if (err instanceof SignedOut) signedOut("Your session ended: sign in again.");
    else throw err;
  }
}

async function revokeInvite(id) {
  try {
    const answer = await api("DELETE", `invites/${encodeURIComponent(id)}`);
    announce(answer.ok ? `Revoked the invite ${id}.` : answer.data?.message ?? "Refused.");
    await Promise.all([refreshInvites(), refreshAudit()]);
    $("invite-create").focus();
  } catch (err) {
    if (err instanceof SignedOut) signedOut("Your session ended: sign in again.");
    else throw err;
  }
}

// -- one report ------------------------------------------------------------------

async function loadEvidence(id, { quiet = false } = {}) {
  const answer = await api("GET", `reports/${id}`);
  if (!answer.ok) {
    state.selected = null;
    $("evidence").hidden = true;
    return;
  }
  const report = answer.data;
  const changed = state.evidence?.status?.state !== report.status.state;
  state.selected = id;
  state.evidence = report;
  renderEvidence(report);
  for (const button of document.querySelectorAll(".queue-button")) {
    button.setAttribute("aria-current", String(button.dataset.report === String(id)));
  }
  if (!quiet) {
    $("action-error").textContent = "";
    $("evidence").focus();
  } else if (changed) {
    announce(`Report ${id}: ${describeState(report.status)}.`);
  }
}

function renderEvidence(report) {
  $("evidence").hidden = false;
  const label = CATEGORY_LABELS[report.category] ?? report.category;
  $("evidence-title").textContent = `Report #${report.id}: ${label}`;
  $("evidence-state").textContent =
    describeState(report.status) + (report.status.note ? ` (note: ${report.status.note})` : "");
  const facts = [
    ["Reason", report.reason || "(none given)"],
    ["Reported", when(report.at)],
    ["The match had lasted", length(report.match_s)],
    ["Reported address group", truncateGroup(report.reported_ip)],
    ["Reporting address group", truncateGroup(report.reporter_ip)],
    ["Automatic ban", report.status.autoban ? "fired on this report" : "no"],
    ["Ban in force", report.ban_now ? describeBan(report.ban_now) : "none"],
  ];
  if (report.reported_account) {
    // The account the gate signed in (a salted key: it names nobody by itself).
    facts.push(
      ["Reported account", `account:${report.reported_account}`],
      [
        "Account ban in force",
        report.account_ban_now ? describeBan(report.account_ban_now) : "none",
      ],
    );
  }
  $("evidence-facts").replaceChildren(
    ...facts.flatMap(([term, value]) => {
      const wrap = el("div");
      wrap.append(el("dt", term), el("dd", value));
      return [wrap];
    }),
  );
  $("transcript").replaceChildren(
    ...report.transcript.map((line) => {
      const item = el("li", undefined, "line");
      const colon = line.indexOf(": ");
      const who = colon > 0 ? line.slice(0, colon) : "";
      const said = colon > 0 ? line.slice(colon + 2) : line;
      item.dataset.side = who;
      item.append(el("span", who === "reported" ? "Reported" : "Reporter", "line-who"));
      item.append(el("span", said, "line-text"));
      return item;
    }),
  );
  $("transcript-empty").hidden = report.transcript.length > 0;
  const history = [
    ...report.earlier_reports.map(
      (r) => `Report #${r.id} (${r.reason || "no reason"}) on ${when(r.at)}`,
    ),
    ...report.bans.map((b) => `Banned ${describeBan(b)}, set ${when(b.created_at)}`),
    ...(report.account_bans ?? []).map(
      (b) => `Account banned ${describeBan(b)}, set ${when(b.created_at)}`,
    ),
  ];
  $("history").replaceChildren(
    ...(history.length ? history : ["No earlier reports or bans."]).map((text) => el("li", text)),
  );
  const open = report.status.state === "open" || report.status.state === "claimed";
  const mine = report.status.state === "claimed" && report.status.by === state.me.name;
  // A decided report is final: its actions go (the state line says what was done).
  $("actions").hidden = !open;
  $("claim").hidden = mine;
  $("lift").hidden = !report.ban_now && !report.account_ban_now;
  $("ban-account").hidden = !report.reported_account;
}

function describeBan(ban) {
  const until = ban.until === null ? "permanently" : `until ${when(ban.until)}`;
  return `${until}${ban.by ? ` by ${ban.by}` : ""}${ban.reason ? ` (${ban.reason})` : ""}`;
}

async function act(action) {
  const id = state.selected;
  if (id === null) return;
  const note = $("action-note").value.trim();
  let body = { note };
  if (action === "claim") body = {};
  if (action === "ban" || action === "ban-account") {
    const value = $("ban-duration").value;
    body = { duration_s: value === "" ? null : Number(value), note };
    if (action === "ban-account") body.target = "account";
  }
  const path = action === "ban-account" ? "ban" : action;
  try {
    const answer = await api("POST", `reports/${id}/${path}`, body);
    if (!answer.ok) {
      $("action-error").textContent = answer.data?.message ?? `Refused (${answer.status}).`;
      await loadEvidence(id, { quiet: true });
      return;
    }
    $("action-error").textContent = "";
    $("action-note").value = "";
    announce(`Report ${id}: ${describeState(answer.data.status)}.`);
    await refresh();
    $("evidence").focus();
  } catch (err) {
    if (err instanceof SignedOut) signedOut("Your session ended: sign in again.");
    else throw err;
  }
}

async function liftBan(target) {
  try {
    const answer = await api("DELETE", `bans/${encodeURIComponent(target)}`);
    announce(answer.ok ? `Lifted the ban of ${target}.` : answer.data?.message ?? "Refused.");
    await refresh();
    $("bans-search").focus();
  } catch (err) {
    if (err instanceof SignedOut) signedOut("Your session ended: sign in again.");
    else throw err;
  }
}

// -- start -------------------------------------------------------------------------

async function start() {
  $("signin-form").addEventListener("submit", (event) => signIn(event));
  $("sign-out").addEventListener("click", () => signOut());
  for (const action of ["claim", "ban", "ban-account", "dismiss", "lift"]) {
    $(action).addEventListener("click", () => act(action));
  }
  $("actions").addEventListener("submit", (event) => event.preventDefault());
  $("raid-form").addEventListener("submit", (event) => toggleRaid(event));
  $("invite-form").addEventListener("submit", (event) => createInvite(event));
  let searching = 0;
  $("bans-search").addEventListener("input", () => {
    clearTimeout(searching);
    searching = setTimeout(() => refreshBans().catch(() => {}), 250);
  });
  const me = await api("GET", "session");
  if (me.ok) enterDesk(me.data);
  else signedOut("");
  window.omiroConsole = state;
}

start();
