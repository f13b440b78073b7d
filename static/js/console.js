// The console page: mints a console URL with one POST, keeps it fresh, and never
// cuts off someone who is typing. Times come from the server's expires_in and a
// monotonic clock (performance.now), never from the client's wall clock. Power actions, the
// server panel and following a start or reboot come from power.js.

import { copyLink } from "./copy-link.js";
import { serverControls } from "./power.js";

const root = document.getElementById("console");
const page = JSON.parse(root.dataset.page);
const frame = document.getElementById("console-frame");
const freshness = document.getElementById("freshness");
const announcer = document.getElementById("announcer");
const notice = document.getElementById("notice");
const noticeText = document.getElementById("notice-text");
const signIn = document.getElementById("notice-signin");
const serialLink = document.getElementById("notice-serial"); // only when the cloud offers serial consoles
const retryButton = document.getElementById("notice-retry");
const resumeButton = document.getElementById("resume");
const startButton = document.getElementById("power-start");
const csrfToken = document.querySelector('meta[name="csrf-token"]').content;

const now = () => performance.now();

// Everything the page knows, in one place; times are performance.now() milliseconds.
const state = {
  // Shown as #console[data-state]: loading, live, pending, retrying, live-retrying,
  // signin, not-running or refused; or, while following the server, starting or rebooting.
  phase: "loading",
  follow: null, // "starting" or "rebooting" while power.js follows the server back to ACTIVE
  held: null, // the freshest URL: {url, refreshAt, expiresAt}
  applied: null, // the URL the frame shows
  swaps: 0,
  timer: null, // the one refresh or retry waiting to run
  inFlight: false,
  attempts: 0, // failed mints in a row, for the backoff
  paused: false, // refreshing paused after a long idle time, until Resume
  stopped: false, // nothing more to do until the person acts (sign in, retry)
  hidden: document.hidden,
  use: { pointerInside: false, lastInside: -Infinity, lastActivity: now() },
};

// Said (once per change) in #announcer; the notice, role=alert, says the details.
const SPOKEN = {
  live: "Console connected",
  retrying: "Console not connected; retrying",
  signin: "Signed out",
  "not-running": "Server not running",
  refused: "Console refused",
  unavailable: "No graphical console for this server",
};

function announce(text) {
  if (announcer.textContent !== text) announcer.textContent = text;
}

function enter(phase) {
  const changed = phase !== state.phase;
  state.phase = phase;
  root.dataset.state = state.follow ?? phase;
  if (state.follow) return;
  if (changed && SPOKEN[phase]) announce(SPOKEN[phase]);
  // With no console URL held, render() has no time to show: say the state instead.
  if (!state.held && phase !== "loading") freshness.textContent = SPOKEN[phase] ?? "";
}

function focusInside() {
  return document.hasFocus() && document.activeElement === frame;
}

function usingConsole() {
  return focusInside() || state.use.pointerInside;
}

// Idle: no focus or pointer inside the console for idleSwapAfter seconds.
function isIdle() {
  return !usingConsole() && now() - state.use.lastInside >= page.idleSwapAfter * 1000;
}

function refreshDelayMs(expiresIn) {
  return Math.max(expiresIn - page.margin, expiresIn / 2) * 1000;
}

function hold(url, expiresIn) {
  const fetchedAt = now();
  state.held = {
    url,
    refreshAt: fetchedAt + refreshDelayMs(expiresIn),
    expiresAt: fetchedAt + expiresIn * 1000,
  };
  state.attempts = 0;
}

function remainingMs() {
  return state.held ? state.held.expiresAt - now() : 0;
}

function isStale() {
  return !state.held || now() >= state.held.refreshAt;
}

function clearTimer() {
  clearTimeout(state.timer);
  state.timer = null;
}

function setTimer(run, delayMs) {
  clearTimeout(state.timer);
  state.timer = setTimeout(run, delayMs);
}

function showNotice(text, { signin = false, retry = false, resume = false, start = false, serial = false } = {}) {
  noticeText.textContent = text;
  signIn.hidden = !signin;
  if (serialLink) serialLink.hidden = !serial;
  retryButton.hidden = !retry;
  resumeButton.hidden = !resume;
  if (startButton) startButton.hidden = !start;
  notice.hidden = false;
}

function hideNotice() {
  notice.hidden = true;
}

function isWebUrl(url) {
  try {
    const parsed = new URL(url);
    return parsed.protocol === "https:" || parsed.protocol === "http:";
  } catch {
    return false;
  }
}

function apply(url) {
  frame.hidden = false;
  frame.src = url;
  state.applied = url;
  state.swaps += 1;
  root.dataset.swaps = String(state.swaps);
  enter("live");
}

function schedule() {
  clearTimer();
  if (state.hidden || state.paused || state.stopped || !state.held) return;
  setTimer(() => mint("refresh"), Math.max(0, state.held.refreshAt - now()));
}

function backoff(message, retryAfter) {
  state.attempts += 1;
  const base = Math.min(60, 2 ** state.attempts);
  const delay = Math.max(retryAfter || 0, base * (0.5 + Math.random() / 2));
  showNotice(`${message} Retrying in ${Math.round(delay)} s.`, { retry: true });
  enter(state.applied ? "live-retrying" : "retrying");
  setTimer(() => mint(state.applied ? "refresh" : "load"), delay * 1000);
}

// The person asked to try again: the backoff starts over.
function retryNow() {
  state.attempts = 0;
  mint(state.applied ? "reconnect" : "load");
}

// -- following a start or reboot (power.js polls; this page connects when the server is back) ---

function following(kind) {
  state.follow = kind;
  stop(state.phase);
  hideNotice();
  freshness.textContent = kind === "starting" ? "Starting…" : "Rebooting…";
}

function running(kind) {
  state.follow = null;
  enter("loading"); // so that live, when the mint is in, is a change and said
  freshness.textContent = "Connecting…";
  mint(kind === "starting" || !state.applied ? "load" : "reconnect");
}

function lost(message) {
  state.follow = null;
  showNotice(message, { retry: true, start: controls.canStart() });
  stop("not-running");
}

const controls = serverControls(page, { announce, following, running, lost });

function stop(phase) {
  state.stopped = true;
  clearTimer();
  enter(phase);
}

function pause() {
  state.paused = true;
  clearTimer();
  showNotice("Refreshing is paused after a long idle time.", { resume: true });
}

function resume() {
  state.paused = false;
  activity();
  hideNotice();
  mint("resume");
}

function activity() {
  state.use.lastActivity = now();
}

function pointerEntered() {
  state.use.pointerInside = true;
  activity();
}

function pointerLeft() {
  state.use.pointerInside = false;
  state.use.lastInside = now();
  activity();
}

function becameHidden() {
  state.hidden = true;
  clearTimer();
}

// Shown again: fetch at once if the held URL is stale, else wait for its refresh time.
function becameVisible() {
  state.hidden = false;
  if (state.paused || state.stopped) return;
  if (isStale()) mint("refresh");
  else schedule();
}

async function failure(response) {
  let error = {};
  try {
    error = (await response.json()).error || {};
  } catch {
    // Not JSON (a proxy's error page): the status says enough.
  }
  const message = error.message || `The broker answered ${response.status}.`;
  if (response.status === 401) {
    showNotice("Your session has ended. Sign in again to keep this console fresh.", { signin: true });
    stop("signin");
  } else if (response.status === 409) {
    if (error.server_status) controls.showServer({ status: error.server_status });
    frame.hidden = true;
    showNotice(message, { retry: true, start: controls.canStart() });
    stop("not-running");
  } else if (response.status === 403 || response.status === 404) {
    frame.hidden = !state.applied;
    showNotice(message);
    stop("refused");
  } else if (error.code === "console_unavailable" && page.serialUrl) {
    // Nova's 400 "VNC disabled" and the like: trying again cannot help; the serial console may.
    frame.hidden = !state.applied;
    showNotice(`${message} Its serial console may still answer.`, { retry: true, serial: true });
    stop("unavailable");
    serialLink.focus();
  } else {
    backoff(message, error.retry_after);
  }
}

function received(data, reason) {
  if (!isWebUrl(data.url)) {
    backoff("The cloud returned an unusable console address.");
    return;
  }
  hold(data.url, Number(data.expires_in));
  controls.showServer(data.server);
  hideNotice();
  const swapNow = !state.applied || reason !== "refresh" || page.swap === "always" || isIdle();
  if (swapNow) apply(data.url);
  else enter("pending");
  schedule();
  render();
}

async function mint(reason) {
  if (state.inFlight) return;
  state.inFlight = true;
  state.stopped = false;
  try {
    const response = await fetch(page.mintUrl, {
      method: "POST",
      credentials: "same-origin",
      cache: "no-store",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken },
      body: JSON.stringify({ reason }),
    });
    if (response.ok) received(await response.json(), reason);
    else await failure(response);
  } catch {
    backoff("The broker cannot be reached.");
  } finally {
    state.inFlight = false;
  }
}

function formatSeconds(ms) {
  const total = Math.max(0, Math.round(ms / 1000));
  return `${Math.floor(total / 60)}:${String(total % 60).padStart(2, "0")}`;
}

function render() {
  if (!state.held || state.follow) return; // following: #freshness says Starting… or Rebooting…
  const left = remainingMs();
  if (state.phase === "pending") {
    freshness.textContent = "Fresh link ready: applies when you pause, or press Reconnect";
  } else if (left <= 0) {
    freshness.textContent = "Link expired; a connected session stays open";
  } else {
    freshness.textContent = `Link valid ${formatSeconds(left)}`;
  }
  freshness.dataset.remaining = String(Math.round(left / 1000));
}

// Once a second: follow focus, swap a waiting URL at the first idle moment,
// pause refreshing after a long idle time, and update the freshness label.
function tick() {
  showFrameFocus();
  if (usingConsole()) state.use.lastInside = now();
  if (state.phase === "pending" && isIdle()) apply(state.held.url);
  if (!state.paused && !state.stopped && now() - state.use.lastActivity > page.pauseAfter * 1000) pause();
  render();
}

function reconnect() {
  activity();
  if (state.follow) return; // it reconnects by itself when the server is back
  if (state.held && !isStale()) {
    apply(state.held.url);
    render();
  } else {
    mint("reconnect");
  }
}

// Focus moving into the frame blurs this window (and tick() looks once a second): the frame's
// ring shows where the keyboard went.
function showFrameFocus() {
  frame.classList.toggle("has-focus", document.activeElement === frame);
}

frame.addEventListener("mouseenter", pointerEntered);
frame.addEventListener("mouseleave", pointerLeft);
window.addEventListener("blur", () => setTimeout(tick, 0));
window.addEventListener("focus", showFrameFocus);
for (const type of ["pointermove", "pointerdown", "keydown", "focus"]) {
  window.addEventListener(type, activity, { passive: true });
}
document.addEventListener("visibilitychange", () => (document.hidden ? becameHidden() : becameVisible()));
document.getElementById("reconnect").addEventListener("click", reconnect);
document.getElementById("fullscreen").addEventListener("click", () => frame.requestFullscreen?.());
document
  .getElementById("copy-link")
  .addEventListener("click", (event) => copyLink(page.brokerLink, event.currentTarget));
retryButton.addEventListener("click", retryNow);
resumeButton.addEventListener("click", resume);

enter("loading");
setInterval(tick, 1000);
mint("load");
