// Power actions and the server panel on both console pages (console.js, viewer.js): the Details
// toggle, the Start / Reboot / Hard reboot buttons, the confirmation dialog (#power-dialog) and
// following the server back to ACTIVE. The page itself says how to connect and what to show.

import { call } from "./api.js";
import { serverPanel } from "./panel.js";
import { showStatus } from "./panel.js";

const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const POLL_MS = 3000;
const FOLLOW_LIMIT_MS = 5 * 60 * 1000;

const WORDS = {
  start: { title: "Start server", confirm: "Start", ask: (name) => `Start server ${name}?`, warning: "" },
  "reboot-soft": { title: "Reboot", confirm: "Reboot", ask: (name) => `Reboot ${name}?`, warning: "" },
  // Said in bold whatever the broker's question says: this one cannot be taken back.
  "reboot-hard": {
    title: "Hard reboot",
    confirm: "Hard reboot",
    ask: (name) => `Hard reboot ${name}?`,
    warning: "Unsaved work in the guest is lost.",
  },
};

// What fits a status when the broker has not said (it does in every GET /api/servers/<id>).
function actionsFor(status) {
  if (status === "ACTIVE") return ["reboot-soft", "reboot-hard"];
  if (status === "SHUTOFF") return ["start"];
  return [];
}

// GET `url` every `every` ms until `done(body)`; resolves with that body, or null once stopped.
// A broker or cloud hiccup is polled through; signed out, refused or gone ends it.
export function poll(url, { done, every = POLL_MS, limit = FOLLOW_LIMIT_MS }) {
  let stopped = false;
  async function run() {
    const until = performance.now() + limit;
    while (performance.now() < until) {
      await sleep(every);
      if (stopped) return null;
      try {
        const body = await call(url);
        if (stopped) return null;
        if (done(body)) return body;
      } catch (error) {
        if (stopped) return null;
        if ([401, 403, 404].includes(error.status)) throw error;
      }
    }
    throw new Error(`The server did not come back within ${Math.round(limit / 60000)} minutes.`);
  }
  return { promise: run(), stop: () => (stopped = true) };
}

// The dialog: opening it asks for a confirmation, Confirm spends it. Resolves with the power
// answer ({action, server}), or null when cancelled.
function powerDialog(page) {
  const dialog = $("power-dialog");
  if (!dialog) return async () => null;
  const [title, question, warning, message, confirm] = [
    "power-title",
    "power-question",
    "power-warning",
    "power-message",
    "power-confirm",
  ].map($);
  let current = null; // {action, resolve, confirmation, expiresAt, busy}

  async function confirmation(ask) {
    const body = await call(page.powerConfirmUrl, { method: "POST", body: { action: ask.action } });
    ask.confirmation = body.confirmation;
    // A little early, so a confirmation never expires on its way.
    ask.expiresAt = performance.now() + (Number(body.expires_in) - 5) * 1000;
    if (ask === current && body.question) question.textContent = body.question;
  }

  async function prepare(ask) {
    try {
      await confirmation(ask);
      if (ask === current) confirm.disabled = false;
    } catch (error) {
      if (ask === current) message.textContent = error.message;
    }
  }

  async function run() {
    const ask = current;
    if (!ask || ask.busy) return;
    ask.busy = true;
    confirm.disabled = true;
    message.textContent = "";
    try {
      if (!ask.confirmation || performance.now() > ask.expiresAt) await confirmation(ask);
      const body = { action: ask.action, confirmation: ask.confirmation };
      ask.confirmation = null; // single use, whatever the answer
      finish(await call(page.powerUrl, { method: "POST", body }));
    } catch (error) {
      ask.confirmation = null;
      message.textContent = error.message;
      confirm.disabled = false; // Confirm again asks for a fresh confirmation first
      confirm.focus(); // disabling it took the focus away
    } finally {
      ask.busy = false;
    }
  }

  function finish(result) {
    const ask = current;
    current = null;
    if (dialog.open) dialog.close();
    ask?.resolve(result);
  }

  $("power-cancel").addEventListener("click", () => finish(null));
  confirm.addEventListener("click", run);
  // Escape: not while the action is on its way, or the page would not follow what it started.
  dialog.addEventListener("cancel", (event) => current?.busy && event.preventDefault());
  dialog.addEventListener("close", () => finish(null));

  return (action, name) =>
    new Promise((resolve) => {
      finish(null);
      const words = WORDS[action];
      current = { action, resolve, confirmation: null, expiresAt: 0, busy: false };
      title.textContent = words.title;
      question.textContent = words.ask(name);
      warning.textContent = words.warning;
      warning.hidden = !words.warning;
      message.textContent = "";
      confirm.textContent = words.confirm;
      confirm.className = action === "start" ? "primary" : "danger";
      confirm.disabled = true;
      dialog.showModal(); // focus lands on Cancel: Confirm waits for the confirmation
      prepare(current);
    });
}

// The toolbar's Details and power buttons, the notice's Start button, and following the server.
// hooks: announce(text); following(kind) as "starting" or "rebooting" begins; running(kind) when
// the server is ACTIVE again; lost(message) when following ends without that.
export function serverControls(page, hooks) {
  const panel = serverPanel();
  const toggle = $("details-toggle");
  const badge = $("server-status");
  const ask = powerDialog(page);
  const buttons = { "reboot-soft": $("power-reboot-soft"), "reboot-hard": $("power-reboot-hard") };
  let server = { ...page.server, ...page.panel };
  let actions = page.actions ?? actionsFor(server.status);
  let follower = null;

  function showButtons() {
    for (const [action, button] of Object.entries(buttons)) {
      if (button) button.hidden = !page.power || follower !== null || !actions.includes(action);
    }
  }

  function showServer(update, newActions) {
    if (!update?.status) return;
    // What the broker said fits, until the status changes (a mint or ticket answer says no more).
    actions = newActions ?? (update.status === server.status ? actions : actionsFor(update.status));
    server = { ...server, ...update };
    showStatus(badge, server.status);
    panel.show(server);
    showButtons();
  }

  function showPanel(show) {
    panel.toggle(show);
    toggle.setAttribute("aria-expanded", String(show));
  }

  async function power(action) {
    const result = await ask(action, server.name);
    if (!result) return;
    showServer(result.server);
    follow(action === "start" ? "starting" : "rebooting", server);
  }

  // Under way: a task state, or a status on its way between ACTIVE, SHUTOFF and ERROR.
  const working = (s) => Boolean(s.task_state) || !["ACTIVE", "SHUTOFF", "ERROR"].includes(s.status);

  function follow(kind, from) {
    let sawWork = working(from);
    let polls = 0;
    const over = (s) => {
      polls += 1;
      if (s.status === "ERROR" || (sawWork && s.status === "SHUTOFF" && !s.task_state)) return true;
      // A reboot the cloud does not show yet has not happened: wait to see it, or for two answers.
      return s.status === "ACTIVE" && !s.task_state && (kind === "starting" || sawWork || polls >= 2);
    };
    follower?.stop();
    const mine = poll(`${page.panelUrl}&fresh=1`, {
      done: (body) => {
        showServer(body.server, body.actions);
        const finished = over(body.server);
        sawWork ||= working(body.server);
        return finished;
      },
    });
    follower = mine;
    showButtons();
    hooks.following(kind);
    hooks.announce(kind === "starting" ? `Server ${from.name} is starting` : `Server ${from.name} is rebooting`);
    mine.promise.then(
      (body) => body && mine === follower && followed(kind, body.server),
      (error) => mine === follower && stopFollowing(error.message),
    );
  }

  function followed(kind, end) {
    if (end.status !== "ACTIVE") {
      const fault = end.fault?.message ? `: ${end.fault.message}` : ".";
      stopFollowing(`The server is ${end.status} now${fault}`);
      return;
    }
    follower = null;
    showButtons();
    hooks.announce(`Server ${end.name} is running; connecting`);
    hooks.running(kind); // the page's own words follow: Connecting…, Connected
  }

  function stopFollowing(message) {
    follower = null;
    showButtons();
    hooks.lost(message);
  }

  toggle.addEventListener("click", () => showPanel(!panel.isOpen));
  $("panel-close").addEventListener("click", () => {
    showPanel(false);
    toggle.focus();
  });
  for (const [action, button] of Object.entries(buttons)) button?.addEventListener("click", () => power(action));
  $("power-start")?.addEventListener("click", () => power("start"));
  showServer(server, actions);

  return {
    showServer,
    get following() {
      return follower !== null;
    },
    // The notice's Start button fits: the console is not running and the server is SHUTOFF.
    canStart: () => Boolean(page.power) && actions.includes("start") && follower === null,
  };
}
