// The window's glue: Tauri commands in, Tauri events out. The Rust backend
// owns the connection, the presence grouping and the stored state; this file
// only shows what it is told and forwards what the user types.
"use strict";

const { invoke } = window.__TAURI__.core;
const { listen } = window.__TAURI__.event;

const $ = (id) => document.getElementById(id);

const list = new UserList($("user-list"), $("user-list-spacer"), (start, end) =>
  invoke("users_window", { start, end }),
);
list.onCount = (n) => {
  $("count").textContent = String(n);
  $("empty").hidden = n > 0;
};
// The row changes when the backend says so (a `presence://users` event).
list.onStar = (row) => call("set_starred", { userId: row.id, starred: !row.starred }).catch(() => {});
setInterval(() => list.tick(), 1000);

const STATUS_TEXT = {
  connecting: "Connecting…",
  online: "Online",
  reconnecting: "Reconnecting",
  offline: "Offline",
};

function showStatus(s) {
  // Another room or server: an invite link shown is no longer this one.
  if (s.room !== $("room-name").textContent || s.serverUrl !== showStatus.url) $("invite").hidden = true;
  showStatus.url = s.serverUrl;
  const box = $("connection");
  box.dataset.status = s.status;
  let text = STATUS_TEXT[s.status] || s.status;
  if (s.status === "reconnecting" && s.attempt) text += ` (attempt ${s.attempt})`;
  $("connection-text").textContent = text;
  $("latency").textContent = s.status === "online" && s.latencyMs != null ? `${s.latencyMs} ms` : "";
  const url = s.serverUrl || "";
  $("server-url").textContent = s.embedded ? `${url} (embedded)` : url;
  if (s.room) $("room-name").textContent = s.room;
}

/** A notice from the backend (a damaged settings file kept, a saved setting not used), shown until dismissed. */
function showNotice(message) {
  const box = document.createElement("p");
  box.className = "notice";
  const text = document.createElement("span");
  text.textContent = message;
  const dismiss = document.createElement("button");
  dismiss.type = "button";
  dismiss.textContent = "×";
  dismiss.setAttribute("aria-label", "Dismiss notice");
  dismiss.addEventListener("click", () => box.remove());
  box.append(text, dismiss);
  $("notices").append(box);
}

let lastSeen = [];

/** "left 12 min ago": minutes, then hours. */
function leftAgo(leftAt, now) {
  const minutes = Math.max(0, Math.floor((now - leftAt) / 60000));
  if (minutes < 1) return "left just now";
  if (minutes < 60) return `left ${minutes} min ago`;
  return `left ${Math.floor(minutes / 60)} h ago`;
}

// One formatter for every entry (the fields of `toLocaleString`'s default):
// `toLocaleString` sets up a new ICU formatter per call, a hundred per
// redraw, once a second while a room empties, and the web view grew by
// about 8 MiB for every second of that.
const LEFT_AT = new Intl.DateTimeFormat(undefined, {
  year: "numeric",
  month: "numeric",
  day: "numeric",
  hour: "numeric",
  minute: "numeric",
  second: "numeric",
});

/** People who left in the last 24 hours, below the present ones, dimmed. */
function showLastSeen(departures) {
  lastSeen = departures;
  const now = Date.now();
  const items = departures.map((d) => {
    const li = document.createElement("li");
    li.dataset.userId = d.id;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = d.username || d.id;
    const when = document.createElement("span");
    when.className = "left-ago";
    when.textContent = leftAgo(d.leftAt, now);
    when.title = LEFT_AT.format(d.leftAt);
    const status = document.createElement("span");
    status.className = "last-status";
    status.textContent = d.status;
    status.title = d.status;
    li.append(name, when, status);
    return li;
  });
  $("last-seen-list").replaceChildren(...items);
  $("last-seen").hidden = departures.length === 0;
}
setInterval(() => lastSeen.length && showLastSeen(lastSeen), 30000);

function showError(message) {
  $("error-text").textContent = message;
  $("error").hidden = false;
}

/** Tauri rejects a failed command with our `{code, message}` error value. */
function describe(err) {
  if (err && typeof err === "object" && err.message) return err.message;
  return String(err);
}

async function call(command, args) {
  try {
    return await invoke(command, args);
  } catch (err) {
    showError(describe(err));
    throw err;
  }
}

function fillSettings(s) {
  $("setting-server").value = s.serverUrl || "";
  $("setting-room").value = s.room;
  $("setting-name").value = s.displayName;
  $("setting-token").value = s.token || "";
  $("setting-user-id").textContent = s.userId;
  $("setting-away").value = String(s.awayAfterMinutes);
  $("setting-away-help").textContent = s.idleAvailable
    ? "You are shown away, with the time you left, and back as soon as you return."
    : "Not available on this desktop: it does not tell apps how long you have been idle.";
  $("setting-notify").checked = s.notifyStarred;
  $("setting-notify").disabled = !!s.notificationsUnavailable;
  $("setting-notify-help").textContent =
    s.notificationsUnavailable ||
    "Star someone with the star before their name. Not while you are Do not disturb, and at most once a minute per person.";
  $("setting-tray").checked = s.closeToTray;
  $("setting-tray-help").textContent = s.hasTray
    ? "You stay in the room; the tray icon brings the window back."
    : "This desktop shows no tray: closing the last window quits.";
}

async function publish() {
  const expire = $("expire").value;
  await call("publish", {
    state: {
      username: $("username").value.trim(),
      status: $("status").value.trim(),
      availability: $("availability").value,
    },
    expireAfter: expire ? Number(expire) : null,
  });
}

$("presence-form").addEventListener("submit", (e) => {
  e.preventDefault();
  publish().catch(() => {});
});

$("clear").addEventListener("click", () => {
  $("status").value = "";
  $("expire").value = "";
  call("clear_status").catch(() => {});
});

$("new-window").addEventListener("click", () => call("new_window").catch(() => {}));

// The link is shown as well as copied: where the clipboard is not ours to
// write, it is selected for Ctrl+C.
$("copy-invite").addEventListener("click", async () => {
  const link = await call("invite_link").catch(() => null);
  if (!link) return;
  const field = $("invite-link");
  field.value = link;
  $("invite").hidden = false;
  try {
    await navigator.clipboard.writeText(link);
    $("invite-copied").textContent = "Copied";
  } catch {
    field.focus();
    field.select();
    $("invite-copied").textContent = "Press Ctrl+C to copy";
  }
});
$("error-dismiss").addEventListener("click", () => ($("error").hidden = true));

$("open-settings").addEventListener("click", async () => {
  $("settings-error").textContent = "";
  fillSettings(await call("get_settings"));
  $("settings").showModal();
});
$("settings-cancel").addEventListener("click", () => $("settings").close());
$("clear-last-seen").addEventListener("click", () => call("clear_last_seen").catch(() => {}));
$("settings-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const settings = {
    serverUrl: $("setting-server").value.trim() || null,
    room: $("setting-room").value.trim(),
    displayName: $("setting-name").value.trim(),
    token: $("setting-token").value.trim() || null,
    closeToTray: $("setting-tray").checked,
    awayAfterMinutes: Number($("setting-away").value || 0),
    notifyStarred: $("setting-notify").checked,
  };
  try {
    const saved = await invoke("set_settings", { settings });
    $("settings").close();
    $("username").value = saved.displayName;
    $("room-name").textContent = saved.room;
  } catch (err) {
    // Stay open so the user can fix the field the message names.
    $("settings-error").textContent = describe(err);
  }
});

async function start() {
  // A JSON string (see `emit_users` in events.rs).
  await listen("presence://users", (e) => list.apply(JSON.parse(e.payload)));
  await listen("mesh://status", (e) => showStatus(e.payload));
  await listen("mesh://error", (e) => showError(e.payload.message));
  await listen("app://notice", (e) => showNotice(e.payload));
  await listen("presence://last-seen", (e) => showLastSeen(e.payload));
  await listen("app://availability", (e) => ($("availability").value = e.payload));
  await listen("app://edit-status", () => $("status").focus());

  // Told once: the backend hands each notice to the first window that asks.
  for (const notice of await call("take_notices")) showNotice(notice);
  const settings = await call("get_settings");
  $("room-name").textContent = settings.room;
  const last = await call("read");
  $("username").value = (last && last.username) || settings.displayName;
  $("status").value = (last && last.status) || "";
  $("availability").value = (last && last.availability) || "available";
  showStatus(await call("connect"));
}

start().catch((err) => showError(describe(err)));
