// The console page: mints a console URL with one POST, keeps it fresh, and never
// cuts off someone who is typing. Times come from the server's expires_in and a
// monotonic clock (performance.now), never from the client's wall clock.

const root = document.getElementById("console");
const page = JSON.parse(root.dataset.page);
const frame = document.getElementById("console-frame");
const freshness = document.getElementById("freshness");
const statusEl = document.getElementById("server-status");
const notice = document.getElementById("notice");
const noticeText = document.getElementById("notice-text");
const signIn = document.getElementById("notice-signin");
const retryButton = document.getElementById("notice-retry");
const resumeButton = document.getElementById("resume");
const csrfToken = document.querySelector('meta[name="csrf-token"]').content;

const now = () => performance.now();
const state = {
  held: null, // {url, fetchedAt, expiresIn}
  applied: null,
  timer: null,
  attempts: 0,
  inFlight: false,
  paused: false,
  stopped: false,
  pointerInside: false,
  lastInside: -Infinity,
  lastActivity: now(),
  swaps: 0,
};

function setState(name) {
  root.dataset.state = name;
}

function focusInside() {
  return document.hasFocus() && document.activeElement === frame;
}

// Idle: no focus or pointer inside the console for idleSwapAfter seconds.
function isIdle() {
  if (focusInside() || state.pointerInside) return false;
  return now() - state.lastInside >= page.idleSwapAfter * 1000;
}

function refreshDelayMs(expiresIn) {
  return Math.max(expiresIn - page.margin, expiresIn / 2) * 1000;
}

function remainingMs() {
  return state.held ? state.held.expiresIn * 1000 - (now() - state.held.fetchedAt) : 0;
}

function isStale() {
  return !state.held || now() - state.held.fetchedAt >= refreshDelayMs(state.held.expiresIn);
}

function showNotice(text, { signin = false, retry = false, resume = false } = {}) {
  noticeText.textContent = text;
  signIn.hidden = !signin;
  retryButton.hidden = !retry;
  resumeButton.hidden = !resume;
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
  setState("live");
}

function schedule() {
  clearTimeout(state.timer);
  state.timer = null;
  if (document.hidden || state.paused || state.stopped || !state.held) return;
  const due = state.held.fetchedAt + refreshDelayMs(state.held.expiresIn) - now();
  state.timer = setTimeout(() => mint("refresh"), Math.max(0, due));
}

function backoff(message, retryAfter) {
  state.attempts += 1;
  const base = Math.min(60, 2 ** state.attempts);
  const delay = Math.max(retryAfter || 0, base * (0.5 + Math.random() / 2));
  showNotice(`${message} Retrying in ${Math.round(delay)} s.`, { retry: true });
  setState(state.applied ? "live-retrying" : "retrying");
  clearTimeout(state.timer);
  state.timer = setTimeout(() => mint(state.applied ? "refresh" : "load"), delay * 1000);
}

function stop(stateName) {
  state.stopped = true;
  clearTimeout(state.timer);
  setState(stateName);
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
    if (error.server_status) statusEl.textContent = error.server_status;
    frame.hidden = true;
    showNotice(message, { retry: true });
    stop("not-running");
  } else if (response.status === 403 || response.status === 404) {
    frame.hidden = !state.applied;
    showNotice(message);
    stop("refused");
  } else {
    backoff(message, error.retry_after);
  }
}

function received(data, reason) {
  if (!isWebUrl(data.url)) {
    backoff("The cloud returned an unusable console address.");
    return;
  }
  state.held = { url: data.url, fetchedAt: now(), expiresIn: Number(data.expires_in) };
  state.attempts = 0;
  statusEl.textContent = data.server.status;
  hideNotice();
  const swapNow = !state.applied || reason !== "refresh" || page.swap === "always" || isIdle();
  if (swapNow) apply(data.url);
  else setState("pending");
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
  if (!state.held) return;
  const left = remainingMs();
  if (root.dataset.state === "pending") {
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
  if (focusInside() || state.pointerInside) state.lastInside = now();
  if (root.dataset.state === "pending" && isIdle()) apply(state.held.url);
  if (!state.paused && !state.stopped && now() - state.lastActivity > page.pauseAfter * 1000) {
    state.paused = true;
    clearTimeout(state.timer);
    showNotice("Refreshing is paused after a long idle time.", { resume: true });
  }
  render();
}

function activity() {
  state.lastActivity = now();
}

function reconnect() {
  activity();
  if (state.held && !isStale()) {
    apply(state.held.url);
    render();
  } else {
    mint("reconnect");
  }
}

async function copyLink() {
  const button = document.getElementById("copy-link");
  try {
    await navigator.clipboard.writeText(page.brokerLink);
  } catch {
    const field = Object.assign(document.createElement("textarea"), { value: page.brokerLink });
    document.body.append(field);
    field.select();
    document.execCommand("copy");
    field.remove();
  }
  button.textContent = "Link copied";
  setTimeout(() => (button.textContent = "Copy link"), 2000);
}

frame.addEventListener("mouseenter", () => {
  state.pointerInside = true;
  activity();
});
frame.addEventListener("mouseleave", () => {
  state.pointerInside = false;
  state.lastInside = now();
  activity();
});
window.addEventListener("blur", () => setTimeout(tick, 0));
for (const type of ["pointermove", "pointerdown", "keydown", "focus"]) {
  window.addEventListener(type, activity, { passive: true });
}
document.addEventListener("visibilitychange", () => {
  if (document.hidden) {
    clearTimeout(state.timer);
  } else if (!state.paused && !state.stopped) {
    if (isStale()) mint("refresh");
    else schedule();
  }
});
document.getElementById("reconnect").addEventListener("click", reconnect);
document.getElementById("fullscreen").addEventListener("click", () => frame.requestFullscreen?.());
document.getElementById("copy-link").addEventListener("click", copyLink);
retryButton.addEventListener("click", () => {
  state.attempts = 0;
  mint(state.applied ? "reconnect" : "load");
});
resumeButton.addEventListener("click", () => {
  state.paused = false;
  activity();
  hideNotice();
  mint("resume");
});

setState("loading");
setInterval(tick, 1000);
mint("load");
