// The serial console page: xterm.js on the broker's relay. The relay holds the one connection to the
// server's serial port and shares it: everyone on this server's serial console sees what it prints
// (what it printed before they came first) and anyone may type. Each websocket is opened with a
// fresh single-use serial ticket; the relay's close code says whether to come back, and its text
// messages say who is connected and when the cloud's side is away. Nothing typed or pasted is
// logged or sent anywhere but down the websocket.

import { FitAddon } from "../vendor/xterm/addon-fit.mjs";
import { Terminal } from "../vendor/xterm/xterm.mjs";
import { call } from "./api.js";
import { copyLink } from "./copy-link.js";
import { serverControls } from "./power.js";

const $ = (id) => document.getElementById(id);
const root = $("console");
const page = JSON.parse(root.dataset.page);
const notice = $("notice");
const encoder = new TextEncoder();

// As the graphical viewer: quick tries first, doubling to 30 s, for 5 minutes; then Reconnect.
const RETRY_FIRST_MS = 250;
const RETRY_MAX_MS = 30000;
const GIVE_UP_MS = 5 * 60 * 1000;
// The relay's close codes (broker/relay/console.py) this page acts on; any other is a drop to come back from.
const SIGNED_OUT = 4401;
const FINAL = {
  4403: "You may no longer open this server.",
  4501: "The cloud has no serial console for this server.",
  4409: "The server is not running.",
  4410: "An administrator ended this console.",
};
const STATUS = {
  loading: "Connecting…",
  live: "Connected",
  reconnecting: "Reconnecting…",
  away: "The server's serial port is away: what you type waits until it is back…",
  signin: "Signed out",
  ended: "Ended",
  failed: "Not connected",
};

const state = { phase: "loading", socket: null, attempt: 0, retryMs: RETRY_FIRST_MS, retryTimer: null, giveUp: null };

const terminal = new Terminal({
  cursorBlink: true,
  scrollback: 10000,
  fontFamily: '"DejaVu Sans Mono", monospace',
  fontSize: 14,
  theme: { background: "#1e1e1e" },
});
const fit = new FitAddon();
terminal.loadAddon(fit);
terminal.open($("screen"));
fit.fit();

function enter(phase) {
  state.phase = phase;
  root.dataset.state = phase;
  const text = STATUS[phase];
  if ($("live-status").textContent !== text) $("live-status").textContent = text;
  $("reconnect").disabled = phase === "signin" || phase === "ended";
}

function showNotice(text, { signin = false, reconnect = false, dismiss = false } = {}) {
  $("notice-text").textContent = text;
  $("notice-signin").hidden = !signin;
  $("notice-retry").hidden = !reconnect;
  $("notice-dismiss").hidden = !dismiss;
  notice.hidden = false;
}

// Who is on this console, as the relay says: the others are named, so nobody types unseen.
function showPeople(people) {
  const others = [...people];
  const mine = others.indexOf(page.username);
  if (mine >= 0) others.splice(mine, 1);
  $("people").textContent = others.length ? `Also connected: ${others.join(", ")}` : "";
}

function stop(phase, text, options) {
  clearTimeout(state.retryTimer);
  clearTimeout(state.giveUp);
  state.giveUp = null;
  leave();
  showNotice(text, options);
  enter(phase);
}

function retry(cause) {
  const wait = state.retryMs;
  state.retryMs = Math.min(wait * 2, RETRY_MAX_MS);
  state.giveUp ??= setTimeout(
    () => stop("failed", `${cause} No connection after 5 minutes of tries.`, { reconnect: true }),
    GIVE_UP_MS,
  );
  clearTimeout(state.retryTimer);
  state.retryTimer = setTimeout(connect, wait);
  showNotice(`${cause} Reconnecting by itself.`, { reconnect: true });
  enter("reconnecting");
}

function leave() {
  const socket = state.socket;
  state.socket = null;
  state.attempt += 1;
  if (socket) socket.close();
}

function reconnectNow() {
  clearTimeout(state.retryTimer);
  leave();
  state.retryMs = RETRY_FIRST_MS;
  notice.hidden = true;
  enter("reconnecting");
  connect();
}

async function connect() {
  const attempt = ++state.attempt;
  let ticket;
  try {
    ticket = await call(page.ticketUrl, { method: "POST" });
  } catch (error) {
    if (attempt !== state.attempt) return;
    if (error.status === 401) stop("signin", "Your sign-in has ended.", { signin: true });
    else if ([403, 404, 409].includes(error.status)) stop("failed", error.message, { reconnect: error.status === 409 });
    else retry(error.message);
    return;
  }
  if (attempt === state.attempt) open(ticket);
}

function open(ticket) {
  let socket;
  try {
    // The ticket rides in a subprotocol offer, not the URL: no proxy logs that header.
    socket = new WebSocket(ticket.url, ["binary", `ticket.${ticket.ticket}`]);
  } catch {
    retry("The console relay's address is unusable.");
    return;
  }
  socket.binaryType = "arraybuffer";
  state.socket = socket;
  // A new connection starts with what the server printed so far (the relay's history): it replaces
  // what the terminal showed.
  socket.addEventListener("open", () => socket === state.socket && terminal.reset());
  socket.addEventListener("message", (event) => {
    if (socket !== state.socket) return;
    if (typeof event.data === "string") told(JSON.parse(event.data));
    else terminal.write(new Uint8Array(event.data));
  });
  socket.addEventListener("close", (event) => socket === state.socket && closed(event));
}

function told(message) {
  if (message.people) {
    if (state.phase !== "live") connected();
    showPeople(message.people);
  }
  if (message.relay === "away") enter("away");
  if (message.relay === "back") enter("live");
}

function connected() {
  clearTimeout(state.giveUp);
  state.giveUp = null;
  state.retryMs = RETRY_FIRST_MS;
  notice.hidden = true;
  enter("live");
  terminal.focus();
}

function closed(event) {
  state.socket = null;
  showPeople([]);
  if (event.code === SIGNED_OUT) stop("signin", "Your sign-in has ended.", { signin: true });
  else if (FINAL[event.code]) stop("ended", event.reason || FINAL[event.code]);
  else retry(event.reason ? `${event.reason}.` : "The serial console's connection was lost.");
}

// Typing and pasting: the bytes go down the websocket as they are, never anywhere else.
function typed(data) {
  if (data.length > page.pasteLimit) {
    showNotice(`That paste is ${data.length} characters; at most ${page.pasteLimit} go at once. Nothing was sent.`, {
      dismiss: true,
    });
    return;
  }
  const socket = state.socket;
  if (!socket || socket.readyState !== WebSocket.OPEN || state.phase === "loading") {
    showNotice("Not connected: what you typed was not sent.", { dismiss: true });
    return;
  }
  usedSinceKeepalive = true;
  socket.send(encoder.encode(data));
}

// The relay's console makes no requests of its own: while someone types, the session is kept alive.
let usedSinceKeepalive = false;

async function keepAlive() {
  if (!usedSinceKeepalive || state.phase !== "live") return;
  usedSinceKeepalive = false;
  await call(page.keepaliveUrl, { method: "POST" }).catch(() => {});
}

function toggleFullscreen() {
  if (document.fullscreenElement) document.exitFullscreen();
  else root.requestFullscreen();
}

serverControls(page, {
  announce: (text) => ($("live-status").textContent = text),
  following: () => {},
  running: () => state.phase !== "live" && reconnectNow(),
  lost: (message) => showNotice(message, { dismiss: true }),
});
// Every key in the terminal belongs to the server's shell, Tab included (completion); F6 is the way
// out to the toolbar, so a keyboard never gets stuck in it (the page says so to screen readers).
terminal.attachCustomKeyEventHandler((event) => {
  if (event.key !== "F6") return true;
  event.preventDefault();
  if (event.type === "keydown") $("toolbar").querySelector("a, button").focus();
  return false;
});
terminal.onData(typed);
new ResizeObserver(() => fit.fit()).observe($("screen"));
$("reconnect").addEventListener("click", reconnectNow);
$("notice-retry").addEventListener("click", reconnectNow);
$("notice-dismiss").addEventListener("click", () => (notice.hidden = true));
$("fullscreen").addEventListener("click", toggleFullscreen);
document.addEventListener("fullscreenchange", () =>
  $("fullscreen").setAttribute("aria-pressed", String(Boolean(document.fullscreenElement))),
);
$("copy-link").addEventListener("click", (event) => copyLink(page.brokerLink, event.currentTarget));
setInterval(keepAlive, page.keepaliveEvery * 1000);

enter("loading");
connect();
