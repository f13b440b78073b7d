// The relay-mode console page: noVNC's RFB core draws the server's screen from the broker's own
// relay websocket, so the cloud's console URL and token never reach the browser. Each websocket is
// opened with a fresh single-use ticket from one POST; the relay's close code says whether to come
// back, and its text messages say when the cloud's side is away. Nothing typed (keys or Type text)
// is logged or sent anywhere but down the websocket.
// Power actions, the server panel and following a start or reboot come from power.js.

import { copyLink } from "./copy-link.js";
import { serverControls } from "./power.js";
import { party } from "./watch.js";

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
const typeLayout = $("type-layout");
const csrfToken = document.querySelector('meta[name="csrf-token"]').content;
// noVNC (RFB and its key tables, 60 modules) loads while the ticket is asked for and the relay opens
// the cloud's side, not before: static imports would hold the ticket's POST back until every module
// had arrived. It is imported just after the first ticket's POST has gone out (at the end of this
// module), so that the POST does not queue behind those module requests either.
let noVNC = null; // {RFB, getKeysym, getKeycode} once loaded
let noVNCLoaded = null; // the promise of it

function loadNoVNC() {
  const modules = [import("../vendor/novnc/core/rfb.js"), import("../vendor/novnc/core/input/util.js")];
  return Promise.all(modules).then(([rfb, input]) => {
    noVNC = { RFB: rfb.default, getKeysym: input.getKeysym, getKeycode: input.getKeycode };
    return noVNC;
  });
}
// When a console ends for a cause that may pass (the cloud's console, the relay, the broker's
// database, the network), the page tries again by itself: after 0.25 s, doubling to at most 30 s
// between tries, for 5 minutes in a row; then it stops and waits for Reconnect. Five minutes
// covers a relay's restart, a database's failover and a console proxy's restart; an outage longer
// than that needs someone who knows of it, not a page that keeps asking the cloud every 30 s.
const RETRY_FIRST_MS = 250;
const RETRY_MAX_MS = 30000;
const GIVE_UP_MS = 5 * 60 * 1000;
// Websockets closed in a row without ever opening before the page says the relay cannot be reached:
// one may be a blip, two are the relay (or the way to it) being down.
const UNREACHABLE_AFTER = 2;
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
const NO_GRAPHICAL_CONSOLE = 4501; // the cloud has no VNC console for it: the serial one may help
const DATABASE_UNAVAILABLE = 4503;
const CONSOLE_ENDED = 4404; // the console this page watched is over
const GOING_AWAY = 1001; // the relay restarting
// What the relay's close reason ends with when keys it held for the server had to be dropped.
const UNDELIVERED = /(\d+) keys? typed did not reach the server/i;
const UNDELIVERED_SUFFIX = /:? ?\d+ keys? typed did not reach the server\.?$/i;
// While the relay replaces the cloud's side, what the person types waits in the relay.
const AWAY_TEXT = "Your keys are not reaching the server: reconnecting to the cloud's console…";

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
  session: null, // {socket, rfb, canvas, painted}: the current one; events of older ones are ignored
  attempt: 0, // bumped by every start, so an answer to an abandoned attempt is dropped
  connects: 0,
  retryMs: RETRY_FIRST_MS,
  retryTimer: null,
  giveUpTimer: null, // set at the first failure in a row
  queue: [], // [keysym, code, down] typed while reconnecting, sent after the next connect
  away: false, // the relay said the cloud's side is gone: keys wait in the relay (#console[data-upstream])
  heldKeys: 0, // key presses sent while away: the relay holds them, and drops them if the connection ends
  unsent: 0, // keys typed that never reached the server, told until the person dismisses it
  cause: "", // why the page is trying again, shown with the countdown
  nextTryAt: 0, // performance.now() of the next try
  tickTimer: null, // the countdown to it
  failedOpens: 0, // websockets in a row that closed without ever opening
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
  if (!state.follow) announce(statusText(phase, detail));
  // A watcher's keys go nowhere until it is given control: the buttons that send keys say so.
  const keys = live && people.driving();
  $("ctrl-alt-del").disabled = !keys;
  $("screenshot").disabled = !live;
  $("type-text").disabled = !keys || state.typing;
  // Signed out, or ended by an administrator: this page offers no way back.
  $("reconnect").disabled = phase === "signin" || phase === "ended";
  if (!live && typeDialog.open) typeDialog.close();
}

function statusText(phase, detail) {
  if (phase === "live" && state.away) return AWAY_TEXT;
  return detail ? `${STATUS_TEXT[phase]} (${detail})` : STATUS_TEXT[phase];
}

function trying() {
  return state.connects > 0 ? "reconnecting" : "loading";
}

function showNotice(text, { signin = false, reconnect = false, start = false, dismiss = false, serial = false } = {}) {
  clearInterval(state.tickTimer);
  $("notice-text").textContent = text;
  $("notice-next").textContent = "";
  $("notice-signin").hidden = !signin;
  if ($("notice-serial")) $("notice-serial").hidden = !serial;
  $("notice-retry").hidden = !reconnect;
  $("notice-dismiss").hidden = !dismiss;
  if ($("power-start")) $("power-start").hidden = !start;
  notice.hidden = false;
}

function plural(count, noun) {
  return `${count} ${noun}${count === 1 ? "" : "s"}`;
}

// A reason from the relay, as a sentence.
function sentence(text) {
  return /[.!?…]$/.test(text) ? text : `${text}.`;
}

// Key presses (not releases) in the page's own queue: what the person would count as typed.
function keyPresses(queue) {
  return queue.filter(([, , down]) => down).length;
}

// Nothing dropped goes unsaid: once connected again, how many keys never arrived stays in sight
// until the person dismisses it (they may need to type them again).
function showUnsent() {
  if (!state.unsent) return false;
  showNotice(`${plural(state.unsent, "key")} you typed did not reach the server: type again what is still needed.`, {
    dismiss: true,
  });
  return true;
}

function dismissUnsent() {
  state.unsent = 0;
  notice.hidden = true;
  focusScreen();
}

function showServer(server) {
  controls.showServer(server);
}

function clearTimers() {
  clearTimeout(state.retryTimer);
  clearTimeout(state.giveUpTimer);
  clearInterval(state.tickTimer);
  state.retryTimer = state.giveUpTimer = state.tickTimer = null;
}

// Leave the current session and any attempt under way, without acting on their events. Returns
// how many key presses the relay was holding for the server: leaving drops them.
function abandon() {
  const session = state.session;
  state.session = null;
  state.attempt += 1;
  const held = leaveAway();
  if (session) {
    keepLastFrame(session);
    if (session.rfb) session.rfb.disconnect();
    else session.socket.close(); // noVNC had not taken it yet
  }
  return held;
}

// Nothing more happens until the person acts: sign in, reconnect, or leave. Keys still waiting
// (in the page's queue, or held by the relay) are dropped, and the notice says how many.
function stop(phase, text, options = {}) {
  clearTimers();
  const dropped = abandon() + keyPresses(state.queue);
  state.queue = [];
  state.retryMs = RETRY_FIRST_MS;
  state.cause = "";
  state.unsent += dropped;
  showNotice(dropped ? `${text} ${plural(dropped, "key")} you typed were not sent.` : text, options);
  enter(phase);
}

// A cause that may pass: a fresh ticket after a wait that doubles (see RETRY_FIRST_MS), in sight:
// the notice says why and counts down to the next try, and Reconnect tries at once.
function retry(cause) {
  const wait = state.retryMs;
  state.retryMs = Math.min(wait * 2, RETRY_MAX_MS);
  state.giveUpTimer ??= setTimeout(giveUp, GIVE_UP_MS);
  clearTimeout(state.retryTimer);
  state.retryTimer = setTimeout(connect, wait);
  state.nextTryAt = performance.now() + wait;
  state.cause = sentence(cause);
  showNotice(`${state.cause} Reconnecting by itself.`, { reconnect: true });
  countDown();
  enter(trying(), `next try in ${Math.ceil(wait / 1000)} s`);
}

// The countdown is for the eye (aria-hidden): the live region said the wait once, in enter().
function countDown() {
  const tick = () => {
    const left = Math.ceil((state.nextTryAt - performance.now()) / 1000);
    $("notice-next").textContent = left > 0 ? `Next try in ${left} s.` : "Trying now…";
    if (left <= 0) clearInterval(state.tickTimer);
  };
  tick();
  state.tickTimer = setInterval(tick, 1000);
}

function giveUp() {
  const cause = state.cause || "The console connection was lost.";
  stop("failed", `${cause} No connection after 5 minutes of tries; Reconnect tries again.`, { reconnect: true });
}

function reconnectNow() {
  clearTimers();
  state.unsent += abandon(); // the queue stays: it is sent after the connect
  state.retryMs = RETRY_FIRST_MS;
  state.cause = "";
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
  // A watcher's first ticket spends the invite; an admin observing needs none.
  const watch = page.watch ? { body: JSON.stringify(page.watch.invite ? { invite: page.watch.invite } : {}) } : {};
  try {
    response = await fetch(page.ticketUrl, {
      method: "POST",
      credentials: "same-origin",
      cache: "no-store",
      headers: { "X-CSRFToken": csrfToken },
      ...watch,
    });
    body = await response.json().catch(() => ({})); // not JSON: the status says enough
  } catch {
    if (attempt === state.attempt) retry("The broker cannot be reached");
    return;
  }
  if (attempt !== state.attempt) return; // Reconnect was pressed, or it gave up, meanwhile
  if (page.watch && response.status !== 401) page.watch.invite = ""; // used up (or refused) either way
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
    retry("The console relay's address is unusable");
    return;
  }
  // Opened at once, so the relay opens the cloud's side while noVNC may still be loading; what the
  // relay sends before noVNC takes the socket is kept (as noVNC reads it) and handed over in order.
  socket.binaryType = "arraybuffer";
  // RFB's "disconnect" event carries no close code, so the page opens the WebSocket itself and
  // hands it to RFB (its documented urlOrChannel argument may be a WebSocket). This listener is
  // added before RFB sets the socket's onclose, so it runs first: the code is known by the time
  // RFB dispatches "disconnect".
  const seen = { opened: false, closed: null };
  const session = { socket, rfb: null, canvas: null, painted: false, early: [] };
  state.session = session;
  socket.addEventListener("open", () => {
    seen.opened = true;
    state.failedOpens = 0;
  });
  socket.addEventListener("close", (event) => {
    seen.closed = event;
    // Closed before noVNC took it (refused, or the relay gone): RFB would refuse a closed socket.
    if (!session.rfb && session === state.session) disconnected(session, seen);
  });
  // RFB is binary; a text message is the relay's own word ({"relay": "away" | "back"}), which RFB ignores.
  socket.addEventListener("message", (event) => {
    if (session !== state.session) return;
    if (typeof event.data === "string") relayTold(event.data);
    else if (!session.rfb) session.early.push(event.data);
  });
  noVNCLoaded.then(({ RFB }) => {
    // A socket that closed meanwhile was dealt with by its close listener.
    if (session === state.session && socket.readyState <= WebSocket.OPEN) attach(session, RFB, seen);
  }, viewerMissing);
}

// A module that failed to load stays failed for this page: only loading the page again can help.
function viewerMissing() {
  if (state.session) stop("failed", "The console viewer could not be loaded: reload the page.");
}

function attach(session, RFB, seen) {
  const rfb = new RFB(screen, session.socket);
  rfb.focusOnClick = true;
  rfb.viewOnly = !people.driving(); // the relay drops a watcher's input anyway: the page does not pretend
  rfb.background = "transparent"; // the last frame, under it, shows until the new one is drawn
  applyScale(rfb);
  session.rfb = rfb;
  // RFB appended its own element, holding the canvas it draws on.
  session.canvas = screen.lastElementChild.querySelector("canvas");
  rfb.addEventListener("connect", () => session === state.session && connected(session));
  rfb.addEventListener("disconnect", () => session === state.session && disconnected(session, seen));
  // RFB's onmessage is set now: what came before goes to it first, before any later message's task.
  for (const data of session.early.splice(0)) session.socket.onmessage(new MessageEvent("message", { data }));
}

function relayTold(text) {
  let message;
  try {
    message = JSON.parse(text);
  } catch {
    return; // not the relay's: nothing to act on
  }
  if (!message || typeof message !== "object" || people.told(message)) return;
  if (message.relay === "away" || message.relay === "back") setAway(message.relay === "away");
}

// A control message to the relay (hand-over, ask, what Type text is about to send), on the live socket.
function sendControl(message) {
  const socket = state.session?.socket;
  if (socket?.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
}

// Control given or taken: only the driver's keys and pointer reach the server.
function setDriving(driving) {
  if (state.session?.rfb) state.session.rfb.viewOnly = !driving;
  if (!driving && typeDialog.open) typeDialog.close();
  enter(state.phase);
}

// "away": the cloud's side is gone and the relay is opening another; keys typed now wait in the
// relay, so the person must know at once. "back": they were delivered, and typing reaches the server.
function setAway(away) {
  state.away = away;
  state.heldKeys = 0;
  if (away) root.dataset.upstream = "away";
  else delete root.dataset.upstream;
  if (state.phase !== "live") return;
  enter("live");
  if (away) showNotice(AWAY_TEXT);
  else if (!showUnsent()) notice.hidden = true;
}

function connected(session) {
  clearTimers();
  state.retryMs = RETRY_FIRST_MS;
  state.cause = "";
  state.connects += 1;
  root.dataset.connects = String(state.connects);
  if (!showUnsent()) notice.hidden = true;
  enter("live");
  if (!typeDialog.open) session.rfb.focus({ preventScroll: true });
  for (const [keysym, code, down] of state.queue) session.rfb.sendKey(keysym, code, down);
  state.queue = [];
  whenPainted(session);
}

function disconnected(session, { opened, closed }) {
  state.session = null;
  people.reset();
  keepLastFrame(session);
  const code = closed?.code;
  const found = UNDELIVERED.exec(closed?.reason || "");
  const held = leaveAway();
  // The keys that never reached the server: as the relay counts them in its reason, or, when a
  // connection the relay was holding keys on ended without its word, those sent since "away".
  const lost = found ? Number(found[1]) : held;
  state.unsent += lost;
  const note = lost ? ` ${plural(lost, "key")} typed did not reach the server.` : "";
  const reason = (closed?.reason || "").replace(UNDELIVERED_SUFFIX, "");
  if (!opened) state.failedOpens += 1;
  if (state.follow && ![SIGNED_OUT, ENDED, NO_LONGER_ALLOWED].includes(code)) {
    waitForServer(); // the reboot cut it: power.js says when the server is back
  } else if (code === SIGNED_OUT) {
    stop("signin", `Your sign-in has ended.${note}`, { signin: true });
  } else if (code === ENDED) {
    stop("ended", `An administrator ended this session.${note}`);
  } else if (code === CONSOLE_ENDED) {
    const owner = page.watch?.owner ?? "Its owner";
    stop("ended", `The console you were watching has ended (${owner} left, or it was closed).`);
  } else if (code === NO_LONGER_ALLOWED) {
    stop("refused", sentence(reason || "You may no longer open this console") + note, { reconnect: true });
  } else if (code === NO_GRAPHICAL_CONSOLE) {
    // Nova's 400 "VNC disabled" and the like: trying again cannot help; the serial console may.
    const offer = page.serialUrl ? " Its serial console may still answer." : "";
    stop("failed", sentence(reason || "The cloud has no graphical console for this server") + offer, {
      reconnect: true,
      serial: Boolean(page.serialUrl),
    });
    $("notice-serial")?.focus();
  } else if (code === NOT_RUNNING) {
    const status = /\(([A-Z_]+)\)/.exec(reason);
    if (status) showServer({ status: status[1] });
    const options = { reconnect: true, start: controls.canStart() };
    stop("not-running", sentence(reason || "The server is not running") + note, options);
  } else {
    // A cause that may pass: the cloud (4502), the database (4503), the relay restarting (1001),
    // a drop (1006) or an error (1011). Keys typed from now on are queued in the page, not lost.
    if (screen.contains(document.activeElement) || document.activeElement === document.body) {
      lastFrame.focus({ preventScroll: true });
    }
    retry(sentence(dropCause(code, reason, opened)) + note);
  }
}

// The connection is over: the relay's word on its side goes with it. Returns the key presses the
// relay was holding for the server (none unless it had said "away").
function leaveAway() {
  const held = state.away ? state.heldKeys : 0;
  state.away = false;
  state.heldKeys = 0;
  delete root.dataset.upstream;
  return held;
}

function dropCause(code, reason, opened) {
  if (code === UNREACHABLE) return reason || "The cloud's console is unreachable";
  if (code === DATABASE_UNAVAILABLE) return reason || "The broker's database is unavailable";
  if (code === GOING_AWAY) return "The console relay is restarting";
  if (!opened && state.failedOpens >= UNREACHABLE_AFTER) return "The console relay cannot be reached";
  if (!opened) return "The console relay did not answer";
  return "The connection to the console was lost";
}

// -- following a start or reboot (power.js polls; this page connects when the server is back) ---

// No tickets while the server is on its way: each would ask the cloud for a console in vain.
function waitForServer() {
  clearTimers();
  state.unsent += abandon();
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
const people = party(page, { send: sendControl, drives: setDriving });

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

function inConsole(event) {
  return event.target === document.body || screen.contains(event.target);
}

// While reconnecting, keys pressed in the console are kept and sent after the next connect.
function queueKey(event) {
  if (state.phase !== "reconnecting" || !inConsole(event) || !people.driving()) return;
  event.preventDefault();
  const keysym = noVNC.getKeysym(event); // loaded: reconnecting follows a connect
  if (keysym && state.queue.length < QUEUE_LIMIT) {
    state.queue.push([keysym, noVNC.getKeycode(event), event.type === "keydown"]);
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
  if (state.session?.rfb) applyScale(state.session.rfb);
}

function focusScreen() {
  state.session?.rfb?.focus({ preventScroll: true });
}

function ctrlAltDel() {
  if (state.away) state.heldKeys += 3;
  state.session?.rfb?.sendCtrlAltDel();
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
  state.session?.rfb?.toBlob((blob) => {
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

// -- Type text: a string sent as the keys of the server's keyboard layout -------------------------

// The layout tables (layouts.js) load after the first ticket's POST has gone out, as noVNC does:
// a static import would hold viewer.js, and so the POST, back until they had arrived.
let layouts = null; // layouts.js once loaded
let layoutsLoaded = null; // the promise of it
const LAYOUT_STORE = "console.typeLayout"; // localStorage: the layout this browser chose last

function loadLayouts() {
  return import("./layouts.js").then((module) => {
    layouts = module;
    for (const [id, name] of Object.entries(module.LAYOUTS)) typeLayout.add(new Option(name, id));
    typeLayout.value = savedLayout();
    return module;
  });
}

// Storage may be refused (a private window, a policy): the default layout then.
function savedLayout() {
  let saved = null;
  try {
    saved = localStorage.getItem(LAYOUT_STORE);
  } catch {}
  return Object.hasOwn(layouts.LAYOUTS, saved ?? "") ? saved : layouts.DEFAULT_LAYOUT;
}

function saveLayout() {
  try {
    localStorage.setItem(LAYOUT_STORE, typeLayout.value);
  } catch {}
}

function untypable(text, layout) {
  return [...text].find((char) => layouts.keyEvents(layout, char) === null);
}

function typeChar(rfb, events) {
  if (state.away) state.heldKeys += keyPresses(events);
  for (const [keysym, code, down] of events) rfb.sendKey(keysym, code, down);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// A drop in the middle waits for the reconnect and carries on; an end (signed out, ended, given up)
// drops the rest and says how far it got.
async function typeText(text, layout) {
  const chars = [...text].map((char) => layouts.keyEvents(layout, char));
  let sent = 0;
  sendControl({ "type-text": chars.length }); // its length for a recording's index, never the text
  state.typing = true;
  enter("live");
  while (sent < chars.length && (state.phase === "live" || state.phase === "reconnecting")) {
    if (state.phase === "reconnecting") {
      await sleep(250);
      continue;
    }
    const chunk = chars.slice(sent, sent + TYPE_CHUNK);
    for (const events of chunk) typeChar(state.session.rfb, events);
    sent += chunk.length;
    await sleep(chunk.reduce((count, events) => count + events.length, 0) * TYPE_EVENT_MS);
  }
  state.typing = false;
  if (state.phase === "live") {
    enter("live");
  } else if (sent < chars.length) {
    $("notice-text").append(` Typing stopped after ${sent} of ${chars.length} characters.`);
  }
}

async function openTypeDialog() {
  try {
    await layoutsLoaded;
  } catch {
    showNotice("Type text could not be loaded: reload the page.");
    return;
  }
  typeMessage.textContent = `At most ${page.typeLimit} characters.`;
  typeDialog.showModal();
  typeInput.focus();
}

function sendTypedText(event) {
  event.preventDefault();
  const text = typeInput.value;
  const layout = typeLayout.value;
  const bad = untypable(text, layout);
  if (!text) {
    typeMessage.textContent = "Nothing to send.";
  } else if (text.length > page.typeLimit) {
    typeMessage.textContent = `That is ${text.length} characters; at most ${page.typeLimit} go at once.`;
  } else if (bad !== undefined) {
    const name = layouts.LAYOUTS[layout];
    typeMessage.textContent = `“${bad}” cannot be typed: the ${name} keyboard layout has no key for it.`;
  } else if (state.phase !== "live" || state.typing) {
    typeMessage.textContent = "The console is not connected.";
  } else {
    closeTypeDialog();
    typeText(text, layout);
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

// While away, what is typed in the console (noVNC sends it) waits in the relay: counted, so that
// a connection that ends holding it can say how much was lost.
function holdKey(event) {
  if (state.away && state.phase === "live" && screen.contains(event.target)) state.heldKeys += 1;
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
$("notice-dismiss").addEventListener("click", dismissUnsent);
$("ctrl-alt-del").addEventListener("click", ctrlAltDel);
$("scale").addEventListener("click", toggleScale);
$("screenshot").addEventListener("click", screenshot);
$("fullscreen").addEventListener("click", toggleFullscreen);
$("copy-link").addEventListener("click", (event) => copyLink(page.brokerLink, event.currentTarget));
$("type-text").addEventListener("click", openTypeDialog);
$("type-form").addEventListener("submit", sendTypedText);
$("type-cancel").addEventListener("click", closeTypeDialog);
typeLayout.addEventListener("change", saveLayout);
typeDialog.addEventListener("close", typeDialogClosed);
document.addEventListener("fullscreenchange", fullscreenChanged);
document.addEventListener("keydown", queueKey);
document.addEventListener("keyup", queueKey);
document.addEventListener("keydown", holdKey, { capture: true });
document.addEventListener("keydown", used, { capture: true });
document.addEventListener("pointerdown", used, { capture: true });
setInterval(keepAlive, page.keepaliveEvery * 1000);

enter("loading");
connect();
noVNCLoaded = loadNoVNC();
layoutsLoaded = loadLayouts();
