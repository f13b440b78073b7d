// Several people on one relay console: who is on it and who drives (the relay tells every page as a
// text message whenever that changes), control handed over and asked for, and the opener's invites.
// Only the driver's keys and pointer reach the server; the relay enforces it, the page shows it.

const $ = (id) => document.getElementById(id);
const ROLE_WORDS = { open: "opened it", watch: "watches", observe: "observes (admin)" };

// party(page, {send, drives}): send(object) puts a control message on the console's websocket;
// drives(boolean) tells the viewer whether this page's keys and pointer reach the server now.
export function party(page, { send, drives }) {
  const csrfToken = document.querySelector('meta[name="csrf-token"]').content;
  const people = $("people");
  const control = $("control");
  const asks = $("asks");
  const inviteButton = $("invite");
  const dialog = $("invite-dialog");
  const state = { you: null, members: [], consoleId: null, asker: null, driving: !page.watch };

  function me() {
    return state.members.find((member) => member.id === state.you);
  }

  function opener() {
    return state.members.find((member) => member.role === "open");
  }

  function driver() {
    return state.members.find((member) => member.drives);
  }

  // "Ann drives · Bob watches · Olga observes (admin)", with "you" for this page's own entry.
  function describe(member) {
    const name = member.id === state.you ? `${member.name} (you)` : member.name;
    return member.drives ? `${name} drives` : `${name} ${ROLE_WORDS[member.role] ?? "watches"}`;
  }

  function render() {
    const self = me();
    const alone = state.members.length <= 1;
    people.textContent = alone ? "" : state.members.map(describe).join(" · ");
    people.hidden = alone;
    const isOpener = self?.role === "open";
    inviteButton.hidden = !isOpener;
    const lead = self && (self.drives || isOpener);
    renderGiveButtons(lead);
    if (!self) {
      control.hidden = true;
    } else if (self.drives && !isOpener) {
      showControl("Give control back", "release");
    } else if (!self.drives && isOpener) {
      showControl("Take control back", "take");
    } else if (!self.drives) {
      showControl("Ask for control", "ask");
    } else {
      control.hidden = true;
    }
    if (asks && (!lead || !state.members.some((member) => member.id === state.asker))) hideAsk();
    // Before the relay says (and after a connection ends), the opener's page drives and a watcher's does not.
    const driving = self ? Boolean(self.drives) : !page.watch;
    if (driving !== state.driving) {
      state.driving = driving;
      drives(driving);
    }
  }

  function showControl(text, action) {
    control.textContent = text;
    control.dataset.action = action;
    control.hidden = false;
  }

  // Whoever drives, and the opener, can hand control to anyone else on the console.
  function renderGiveButtons(lead) {
    const list = $("give-list");
    list.replaceChildren();
    if (!lead) return;
    for (const member of state.members) {
      if (member.drives || member.id === state.you) continue;
      const button = Object.assign(document.createElement("button"), {
        type: "button",
        textContent: `Give control to ${member.name}`,
      });
      button.dataset.to = member.id;
      button.addEventListener("click", () => give(member.id));
      list.append(button);
    }
  }

  function give(to) {
    send({ control: "give", to });
    hideAsk();
  }

  function showAsk(asker) {
    state.asker = asker.id;
    $("asks-text").textContent = `${asker.name} asks for control.`;
    asks.hidden = false;
  }

  function hideAsk() {
    state.asker = null;
    asks.hidden = true;
  }

  // A text message from the relay that is about the people on the console; false for any other.
  function told(message) {
    if (Array.isArray(message.people)) {
      state.members = message.people;
      state.you = message.you;
      state.consoleId = message.console;
      render();
      return true;
    }
    if (message.asks && typeof message.asks === "object") {
      const self = me();
      if (self && (self.drives || self.role === "open")) showAsk(message.asks);
      return true;
    }
    return false;
  }

  // The connection ended: nobody is known to be on it until the next one says.
  function reset() {
    state.members = [];
    state.you = null;
    hideAsk();
    render();
  }

  // -- invites (the opener's page only) ------------------------------------------------------------

  function openInvite() {
    $("invite-result").hidden = true;
    $("invite-message").textContent = "";
    $("invite-user").value = "";
    dialog.showModal();
    $("invite-user").focus();
  }

  async function invite(event) {
    event.preventDefault();
    const named = event.submitter?.id !== "invite-link";
    const user = $("invite-user").value.trim();
    if (named && !user) {
      $("invite-message").textContent = "Type the user name of the person to invite, or make a link.";
      $("invite-user").focus();
      return;
    }
    if (state.consoleId == null) {
      $("invite-message").textContent = "The console is not connected.";
      return;
    }
    const url = page.invitesUrl.replace("/0/", `/${state.consoleId}/`);
    let response;
    let body;
    try {
      response = await fetch(url, {
        method: "POST",
        credentials: "same-origin",
        headers: { "X-CSRFToken": csrfToken, "Content-Type": "application/json" },
        body: JSON.stringify(named ? { user } : {}),
      });
      body = await response.json().catch(() => ({}));
    } catch {
      $("invite-message").textContent = "The broker cannot be reached: try again.";
      return;
    }
    if (!response.ok) {
      $("invite-message").textContent = body.error?.message || `The broker answered ${response.status}.`;
      return;
    }
    showInvite(body);
  }

  function showInvite(body) {
    const minutes = Math.round(body.expires_in / 60);
    const who = body.user ? `${body.user} can use it` : "Anyone who may open this server can use it";
    $("invite-url").value = body.url;
    $("invite-message").textContent = `${who} once, within ${minutes} minutes. Send them the link.`;
    $("invite-result").hidden = false;
    $("invite-url").select();
  }

  async function copyInvite(event) {
    const button = event.currentTarget;
    try {
      await navigator.clipboard.writeText($("invite-url").value);
    } catch {
      $("invite-url").select();
      document.execCommand("copy");
    }
    button.textContent = "Copied";
    setTimeout(() => (button.textContent = "Copy"), 2000);
  }

  control.addEventListener("click", () => send({ control: control.dataset.action }));
  $("asks-give").addEventListener("click", () => state.asker && give(state.asker));
  $("asks-dismiss").addEventListener("click", hideAsk);
  inviteButton.addEventListener("click", openInvite);
  $("invite-form").addEventListener("submit", invite);
  $("invite-copy").addEventListener("click", copyInvite);
  $("invite-close").addEventListener("click", () => dialog.close());
  render();
  return { told, reset, driving: () => state.driving };
}
