// The relay-mode console page: noVNC's RFB core draws the server's screen from the broker's own
// relay websocket, so the cloud's console URL and token never reach the browser. Each websocket is
// opened with a fresh single-use ticket from one POST; the relay's close code says whether to come
// back. Nothing typed (keys or Type text) is logged or sent anywhere but down the websocket.
// Power actions, the server panel and following a start or reboot come from power.js.

import RFB from "../vendor/novnc/core/rfb.js";
import KeyTable from "../vendor/novnc/core/input/keysym.js";
import { getKeycode, getKeysym } from "../vendor/novnc/core/input/util.js";
import { copyLink } from "./copy-link.js";
import { serverControls } from "./power.js";

const $ = (id) => document.getElementById(id);
const root = $("console");
const page = JSON.parse(root.dataset.page);
const screen = $("screen");
const lastFrame = $("last-frame");
const lastFrameCanvas = $("last-frame-canvas");
const liveStatus = $("live-status");
const notice = $("notice");
const typeDialog = $("type-dialog");
const typeInput = $("type-input");
const typeMessage = $("type-message");
const csrfToken = document.querySelector('meta[name="csrf-token"]').content;

const RETRY_FIRST_MS = 250;
const RETRY_MAX_MS = 4000;
const GIVE_UP_MS = 30000;
const QUEUE_LIMIT = 2000; // key events kept while reconnecting; past that someone leans on a key
// Type text paces itself: QEMU delays each key event it gets (10 ms by default) and drops what
// overflows its input queue, so a long text goes in chunks the guest keeps up with.
const TYPE_CHUNK = 25;
const TYPE_EVENT_MS = 12;

// The relay's own close codes (relay-design.md); any other close is a drop to come back from.
const SIGNED_OUT = 4401;
const ENDED = 4410;
const NOT_RUNNING = 4409;
const NO_LONGER_ALLOWED = 4403; // the server is gone, or a rule no longer grants it
const UNREACHABLE = 4502;

const STATUS_TEXT = {
  loading: "Connecting…",
  live: "Connected",
  reconnecting: "Reconnecting…",
  signin: "Signed out",
  ended: "Session ended",
  "not-running": "Server not running",
  refused: "Not allowed",
  failed: "Disconnected",
};

const state = {
  // Shown as #console[data-state]: loading, live, reconnecting, signin, ended, not-running,
  // refused or failed. Trying again before the first connect is still "loading". While power.js
  // follows the server back to ACTIVE, data-state says "starting" or "rebooting" instead.
  phase: "loading",
  follow: null,
  session: null, // {rfb, canvas, painted}: the current one; events of older ones are ignored
  attempt: 0, // bumped by every start, so an answer to an abandoned attempt is dropped
  connects: 0,
  retryMs: RETRY_FIRST_MS,
  retryTimer: null,
  giveUpTimer: null, // set at the first failure in a row
  queue: [], // [keysym, code, down] typed while reconnecting, sent after the next connect
  typing: false,
  scale: true,
};

function announce(text) {
  // Writing the same text again would make screen readers announce it again.
  if (liveStatus.textContent !== text) liveStatus.textContent = text;
}

function enter(phase, detail = "") {
  state.phase = phase;
  root.dataset.state = state.follow ?? phase;
  const live = phase === "live";
  if (live && state.typing) detail = "typing…";
  // While following, #live-status keeps what power.js announced.
  if (!state.follow) announce(detail ? `${STATUS_TEXT[phase]} (${detail})` : STATUS_TEXT[phase]);
  $("ctrl-alt-del").disabled = !live;
  $("screenshot").disabled = !live;
  $("type-text").disabled = !live || state.typing;
  // Signed out, or ended by an administrator: this page offers no way back.
  $("reconnect").disabled = phase === "signin" || phase === "ended";
  if (!live && typeDialog.open) typeDialog.close();
}

function trying() {
  return state.connects > 0 ? "reconnecting" : "loading";
}

function showNotice(text, { signin = false, reconnect = false, start = false } = {}) {
  $("notice-text").textContent = text;
  $("notice-signin").hidden = !signin;
  $("notice-retry").hidden = !reconnect;
  if ($("power-start")) $("power-start").hidden = !start;
  notice.hidden = false;
}

function showServer(server) {
  controls.showServer(server);
}

function clearTimers() {
  clearTimeout(state.retryTimer);
  clearTimeout(state.giveUpTimer);
  state.retryTimer = state.giveUpTimer = null;
}

// Leave the current session and any attempt under way, without acting on their events.
function abandon() {
  const session = state.session;
  state.session = null;
  state.attempt += 1;
  if (session) {
    keepLastFrame(session);
    session.rfb.disconnect();
  }
}

// Nothing more happens until the person acts: sign in, reconnect, or leave.
function stop(phase, text, options = {}) {
  clearTimers();
  abandon();
  state.queue = [];
  state.retryMs = RETRY_FIRST_MS;
  showNotice(text, options);
  enter(phase);
}

// Behind the scenes: a fresh ticket after 0.25 s, doubling to 4 s, for at most 30 s in a row.
function retry(reason = "") {
  enter(trying(), reason);
  state.giveUpTimer ??= setTimeout(giveUp, GIVE_UP_MS);
  clearTimeout(state.retryTimer);
  state.retryTimer = setTimeout(connect, state.retryMs);
  state.retryMs = Math.min(state.retryMs * 2, RETRY_MAX_MS);
}

function giveUp() {
  stop("failed", "The console connection was lost and could not be re-established.", { reconnect: true });
}

function reconnectNow() {
  clearTimers();
  abandon();
  state.retryMs = RETRY_FIRST_MS;
  notice.hidden = true;
  enter(trying());
  connect();
}

function ticketRefused(status, error) {
  const message = error.message || `The broker answered ${status}.`;
  if (status === 401) {
    stop("signin", "Your sign-in has ended.", { signin: true });
  } else if (status === 403 || status === 404) {
    stop("refused", message);
  } else if (status === 409) {
    if (error.server_status) showServer({ status: error.server_status });
    if (state.follow) waitForServer();
    else stop("not-running", message, { reconnect: true, start: controls.canStart() });
  } else {
    retry(message); // 5xx, 429, a proxy's error page: the broker may answer in a moment
  }
}

async function connect() {
  const attempt = ++state.attempt;
  let response;
  let body;
  try {
    response = await fetch(page.ticketUrl, {
      method: "POST",
      credentials: "same-origin",
      cache: "no-store",
      headers: { "X-CSRFToken": csrfToken },
    });
    body = await response.json().catch(() => ({})); // not JSON: the status says enough
  } catch {
    if (attempt === state.attempt) retry("the broker cannot be reached");
    return;
  }
  if (attempt !== state.attempt) return; // Reconnect was pressed, or it gave up, meanwhile
  if (response.ok) open(body);
  else ticketRefused(response.status, body.error || {});
}

function open(ticket) {
  showServer(ticket.server);
  let socket;
  try {
    // The ticket rides in a subprotocol offer, not the URL: no proxy logs that header.
    socket = new WebSocket(ticket.url, ["binary", `ticket.${ticket.ticket}`]);
  } catch {
    retry("the relay's address is unusable");
    return;
  }
  // RFB's "disconnect" event carries no close code, so the page opens the WebSocket itself and
  // hands it to RFB (its documented urlOrChannel argument may be a WebSocket). This listener is
  // added before RFB sets the socket's onclose, so it runs first: the code is known by the time
  // RFB dispatches "disconnect".
  let closed = null;
  socket.addEventListener("close", (event) => (closed = event));
  const rfb = new RFB(screen, socket);
  rfb.focusOnClick = true;
  rfb.background = "transparent"; // the last frame, under it, shows until the new one is drawn
  applyScale(rfb);
  // RFB appended its own element, holding the canvas it draws on.
  const session = { rfb, canvas: screen.lastElementChild.querySelector("canvas"), painted: false };
  state.session = session;
  rfb.addEventListener("connect", () => session === state.session && connected(session));
  rfb.addEventListener("disconnect", () => session === state.session && disconnected(session, closed));
}

function connected(session) {
  clearTimers();
  state.retryMs = RETRY_FIRST_MS;
  state.connects += 1;
  root.dataset.connects = String(state.connects);
  notice.hidden = true;
  enter("live");
  if (!typeDialog.open) session.rfb.focus({ preventScroll: true });
  for (const [keysym, code, down] of state.queue) session.rfb.sendKey(keysym, code, down);
  state.queue = [];
  whenPainted(session);
}

function disconnected(session, closed) {
  state.session = null;
  keepLastFrame(session);
  const code = closed?.code;
  if (state.follow && ![SIGNED_OUT, ENDED, NO_LONGER_ALLOWED].includes(code)) {
    waitForServer(); // the reboot cut it: power.js says when the server is back
  } else if (code === SIGNED_OUT) {
    stop("signin", "Your sign-in has ended.", { signin: true });
  } else if (code === ENDED) {
    stop("ended", "An administrator ended this session.");
  } else if (code === NO_LONGER_ALLOWED) {
    stop("refused", closed.reason || "You may no longer open this console.", { reconnect: true });
  } else if (code === NOT_RUNNING) {
    const status = /\(([A-Z_]+)\)/.exec(closed.reason);
    if (status) showServer({ status: status[1] });
    stop("not-running", closed.reason || "The server is not running.", { reconnect: true, start: controls.canStart() });
  } else if (code === UNREACHABLE) {
    stop("failed", "The cloud's console is unreachable.", { reconnect: true });
  } else {
    // The relay restarting (1001), a network drop (1006), an error (1011): come back unseen.
    if (screen.contains(document.activeElement) || document.activeElement === document.body) {
      lastFrame.focus({ preventScroll: true }); // keys typed now are queued, not lost
    }
    retry();
  }
}

// -- following a start or reboot (power.js polls; this page connects when the server is back) ---

// No tickets while the server is on its way: each would ask the cloud for a console in vain.
function waitForServer() {
  clearTimers();
  abandon();
  enter(trying());
}

function following(kind) {
  state.follow = kind;
  clearTimers();
  notice.hidden = true;
  if (state.phase !== "live") waitForServer();
  else enter("live");
}

function running(kind) {
  state.follow = null;
  if (kind === "starting" || state.phase !== "live") reconnectNow();
  else enter("live");
}

function lost(message) {
  state.follow = null;
  if (state.phase === "live") {
    enter("live");
    showNotice(message);
  } else {
    stop("not-running", message, { reconnect: true, start: controls.canStart() });
  }
}

const controls = serverControls(page, { announce, following, running, lost });

// -- the last frame stays on screen until a new session has drawn its own ----------------------

function keepLastFrame(session) {
  const { canvas } = session;
  if (!session.painted || !canvas.width || !canvas.height) return; // nothing newer to keep
  lastFrameCanvas.width = canvas.width;
  lastFrameCanvas.height = canvas.height;
  lastFrameCanvas.getContext("2d").drawImage(canvas, 0, 0);
  lastFrameCanvas.style.width = canvas.style.width;
  lastFrameCanvas.style.height = canvas.style.height;
  lastFrame.hidden = false;
}

// RFB has no event for a drawn frame. Its canvas is transparent until the first update is drawn,
// and that update is the whole screen, so an opaque pixel in the middle says the frame is there.
// The pixel is read through a 1x1 probe made for reading, not from noVNC's own canvas.
const probe = document.createElement("canvas").getContext("2d", { willReadFrequently: true });
probe.canvas.width = probe.canvas.height = 1;

function drawn(canvas) {
  if (!canvas.width || !canvas.height) return false;
  probe.clearRect(0, 0, 1, 1);
  probe.drawImage(canvas, canvas.width >> 1, canvas.height >> 1, 1, 1, 0, 0, 1, 1);
  return probe.getImageData(0, 0, 1, 1).data[3] === 255;
}

function whenPainted(session, deadline = performance.now() + 10000) {
  const check = () => {
    if (session !== state.session) return;
    if (drawn(session.canvas) || performance.now() > deadline) {
      session.painted = true;
      lastFrame.hidden = true;
    } else {
      requestAnimationFrame(check);
    }
  };
  requestAnimationFrame(check);
}

// While reconnecting, keys pressed in the console are kept and sent after the next connect.
function queueKey(event) {
  const inConsole = event.target === document.body || screen.contains(event.target);
  if (state.phase !== "reconnecting" || !inConsole) return;
  event.preventDefault();
  const keysym = getKeysym(event);
  if (keysym && state.queue.length < QUEUE_LIMIT) {
    state.queue.push([keysym, getKeycode(event), event.type === "keydown"]);
  }
}

// -- toolbar -------------------------------------------------------------------------------------

function applyScale(rfb) {
  rfb.clipViewport = false; // at 1:1 the screen scrolls instead of being cut
  rfb.scaleViewport = state.scale;
}

function toggleScale() {
  state.scale = !state.scale;
  $("scale").setAttribute("aria-pressed", String(state.scale));
  if (state.session) applyScale(state.session.rfb);
}

function focusScreen() {
  state.session?.rfb.focus({ preventScroll: true });
}

function ctrlAltDel() {
  state.session?.rfb.sendCtrlAltDel();
  focusScreen();
}

function toggleFullscreen() {
  if (document.fullscreenElement) document.exitFullscreen();
  else root.requestFullscreen?.();
}

function fullscreenChanged() {
  $("fullscreen").setAttribute("aria-pressed", String(document.fullscreenElement === root));
  focusScreen(); // the button kept focus; typing should go to the console
}

function utcStamp() {
  return new Date().toISOString().replace(/\.\d+Z$/, "Z").replace(/[-:]/g, "");
}

function screenshot() {
  const name = page.server.name.replace(/[^\w.-]+/g, "-").replace(/^[-.]+|-+$/g, "") || "console";
  state.session?.rfb.toBlob((blob) => {
    if (!blob) return;
    const link = Object.assign(document.createElement("a"), {
      href: URL.createObjectURL(blob),
      download: `${name}-${utcStamp()}.png`,
      hidden: true,
    });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 60000);
  }, "image/png");
}

// -- Type text: a string sent as keystrokes ------------------------------------------------------

// Characters a US keyboard types with Shift held. Keysym servers take the keysym alone, but QEMU
// turns keysyms back into scancodes and needs Shift pressed around them.
const SHIFTED = new Set('ABCDEFGHIJKLMNOPQRSTUVWXYZ~!@#$%^&*()_+{}|:"<>?');

// Printable ASCII keysyms equal the character codes; newline is Return, tab is Tab.
function keysymOf(char) {
  if (char === "\n") return KeyTable.XK_Return;
  if (char === "\t") return KeyTable.XK_Tab;
  const code = char.charCodeAt(0);
  return char.length === 1 && code >= 0x20 && code <= 0x7e ? code : null;
}

function untypable(text) {
  return [...text].find((char) => keysymOf(char) === null);
}

function typeChar(rfb, char) {
  const shift = SHIFTED.has(char);
  if (shift) rfb.sendKey(KeyTable.XK_Shift_L, null, true);
  rfb.sendKey(keysymOf(char), null); // down and up
  if (shift) rfb.sendKey(KeyTable.XK_Shift_L, null, false);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// A drop in the middle waits for the reconnect and carries on; an end (signed out, ended, given up)
// drops the rest and says how far it got.
async function typeText(text) {
  const chars = [...text];
  let sent = 0;
  state.typing = true;
  enter("live");
  while (sent < chars.length && (state.phase === "live" || state.phase === "reconnecting")) {
    if (state.phase === "reconnecting") {
      await sleep(250);
      continue;
    }
    const chunk = chars.slice(sent, sent + TYPE_CHUNK);
    for (const char of chunk) typeChar(state.session.rfb, char);
    sent += chunk.length;
    await sleep(chunk.reduce((events, char) => events + (SHIFTED.has(char) ? 4 : 2), 0) * TYPE_EVENT_MS);
  }
  state.typing = false;
  if (state.phase === "live") {
    enter("live");
  } else if (sent < chars.length) {
    $("notice-text").append(` Typing stopped after ${sent} of ${chars.length} characters.`);
  }
}

function openTypeDialog() {
  typeMessage.textContent = `At most ${page.typeLimit} characters.`;
  typeDialog.showModal();
  typeInput.focus();
}

function sendTypedText(event) {
  event.preventDefault();
  const text = typeInput.value;
  const bad = untypable(text);
  if (!text) {
    typeMessage.textContent = "Nothing to send.";
  } else if (text.length > page.typeLimit) {
    typeMessage.textContent = `That is ${text.length} characters; at most ${page.typeLimit} go at once.`;
  } else if (bad !== undefined) {
    typeMessage.textContent = `“${bad}” cannot be typed: letters, digits, punctuation, space, Tab, Enter.`;
  } else if (state.phase !== "live" || state.typing) {
    typeMessage.textContent = "The console is not connected.";
  } else {
    closeTypeDialog();
    typeText(text);
  }
}

function closeTypeDialog() {
  typeDialog.close();
  typeInput.value = ""; // now, not at the "close" event a moment later
}

// The text may be a password: it leaves the textarea when the dialog closes, sent or not.
function typeDialogClosed() {
  typeInput.value = "";
  typeMessage.textContent = "";
  focusScreen();
}

// The sign-in session times out after a while without requests, and a console carried by the
// relay makes none: while someone is using it, the page tells the broker now and then.
let usedSinceKeepalive = false;

function used() {
  usedSinceKeepalive = true;
}

async function keepAlive() {
  if (!usedSinceKeepalive || state.phase !== "live") return;
  usedSinceKeepalive = false;
  // A 401 needs no handling here: the relay closes the console with "Sign in again" within seconds.
  await fetch(page.keepaliveUrl, { method: "POST", headers: { "X-CSRFToken": csrfToken } }).catch(() => {});
}

$("reconnect").addEventListener("click", reconnectNow);
$("notice-retry").addEventListener("click", reconnectNow);
$("ctrl-alt-del").addEventListener("click", ctrlAltDel);
$("scale").addEventListener("click", toggleScale);
$("screenshot").addEventListener("click", screenshot);
$("fullscreen").addEventListener("click", toggleFullscreen);
$("copy-link").addEventListener("click", (event) => copyLink(page.brokerLink, event.currentTarget));
$("type-text").addEventListener("click", openTypeDialog);
$("type-form").addEventListener("submit", sendTypedText);
$("type-cancel").addEventListener("click", closeTypeDialog);
typeDialog.addEventListener("close", typeDialogClosed);
document.addEventListener("fullscreenchange", fullscreenChanged);
document.addEventListener("keydown", queueKey);
document.addEventListener("keyup", queueKey);
document.addEventListener("keydown", used, { capture: true });
document.addEventListener("pointerdown", used, { capture: true });
setInterval(keepAlive, page.keepaliveEvery * 1000);

enter("loading");
connect();
