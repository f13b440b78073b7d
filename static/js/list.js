// The server list. Instant search asks /api/servers as you type (the broker holds the list in
// memory, so an answer takes milliseconds) and rebuilds what templates/servers/list.html renders
// (cloud notices, counts, rows, the empty-state line) with textContent only; ?q= and ?cloud= stay
// in the address for bookmarks. Also: pins (PUT/DELETE /api/pins/<id>), the server panel
// (GET /api/servers/<id>), and the keyboard path: "/" to search, arrows through the servers.

import { call } from "./api.js";
import { serverUrl } from "./api.js";
import { element } from "./panel.js";
import { serverPanel } from "./panel.js";
import { statusBadge } from "./panel.js";
import { timeElement } from "./panel.js";

const $ = (id) => document.getElementById(id);
const section = $("server-list");
const input = $("q");
const cloudSelect = $("cloud-filter");
const notices = $("cloud-notices");
const tbody = document.querySelector("#servers tbody");
const shown = $("shown-count");
const total = $("total-count");
const moreHint = $("more-hint");
const noMatch = $("no-match");
const pinnedList = $("pinned-list");
const listStatus = $("list-status");
const listError = $("list-error");
const panel = serverPanel($("server-panel"), { link: true });
const rows = Number(section.dataset.rows);
// The page's ?cloud= narrowing, until the cloud chooser changes it.
let cloud = section.dataset.cloud;
let controller = null;
let timer = 0;
let opened = null; // {id, cloud, button}: the server the panel shows

function say(text) {
  listStatus.textContent = text;
}

function fail(text) {
  listError.textContent = text;
  listError.hidden = !text;
}

// -- rows, as the template renders them ---------------------------------------------------------

function pinButton(server, pinned) {
  const button = element("button", "", "pin");
  button.type = "button";
  button.setAttribute("aria-pressed", String(pinned));
  button.setAttribute("aria-label", `Pin ${server.name}`);
  button.title = pinned ? "Unpin" : "Pin";
  return button;
}

function detailsButton(server) {
  const button = element("button", "", "details");
  button.type = "button";
  button.setAttribute("aria-expanded", "false");
  button.setAttribute("aria-controls", "server-panel");
  button.setAttribute("aria-label", `Details of ${server.name}`);
  return button;
}

function describe(node, server) {
  node.dataset.id = server.id;
  node.dataset.cloud = server.cloud;
  node.dataset.name = server.name;
  node.dataset.status = server.status;
}

function serverRow(server) {
  const tr = document.createElement("tr");
  tr.dataset.status = server.status;
  describe(tr, server);
  const link = element("a", server.name, "server-link");
  link.setAttribute("href", server.console_page);
  const actions = element("span", "", "row-actions");
  actions.append(pinButton(server, Boolean(server.pinned)), detailsButton(server));
  const name = document.createElement("td");
  name.append(link, actions);
  const status = document.createElement("td");
  status.append(statusBadge(server.status));
  tr.append(
    name,
    status,
    element("td", server.addresses.join(", ")),
    element("td", server.availability_zone),
    element("td", server.cloud),
    element("td", server.id, "id"),
  );
  if (opened && sameServer(tr, opened)) tr.querySelector(".details").setAttribute("aria-expanded", "true");
  return tr;
}

function cloudNotice(notice) {
  const p = element("p", notice.text, `warning cloud-${notice.kind}`);
  p.dataset.cloud = notice.cloud;
  return p;
}

function render(body, query) {
  notices.replaceChildren(...body.notices.map(cloudNotice));
  tbody.replaceChildren(...body.servers.map(serverRow));
  shown.textContent = String(body.servers.length);
  total.textContent = String(body.total);
  moreHint.hidden = body.total <= body.servers.length;
  noMatch.hidden = body.servers.length > 0;
  noMatch.textContent = query ? noMatch.dataset.noMatch : noMatch.dataset.none;
}

function remember(query) {
  const url = new URL(window.location.href);
  for (const [name, value] of [["q", query], ["cloud", cloud]]) {
    if (value) url.searchParams.set(name, value);
    else url.searchParams.delete(name);
  }
  window.history.replaceState(null, "", url);
}

async function search() {
  const query = input.value.trim();
  const params = new URLSearchParams({ q: query, limit: String(rows) });
  if (cloud) params.set("cloud", cloud);
  controller?.abort();
  controller = new AbortController();
  try {
    const response = await fetch(`${section.dataset.api}?${params}`, {
      credentials: "same-origin",
      signal: controller.signal,
    });
    if (response.status === 401) {
      window.location.reload();
      return;
    }
    if (!response.ok) return;
    render(await response.json(), query);
  } catch (error) {
    if (error.name === "AbortError") return; // a newer search took over
    throw error;
  }
  remember(query);
}

function searchSoon() {
  clearTimeout(timer);
  timer = setTimeout(search, 60);
}

// -- pins -----------------------------------------------------------------------------------------

function sameServer(node, server) {
  return node.dataset.id === server.id && node.dataset.cloud === server.cloud;
}

function holders(server) {
  return [...document.querySelectorAll("[data-id]")].filter((node) => sameServer(node, server));
}

function pinnedItem(server, link) {
  const item = element("li", "", "quick-item");
  describe(item, server);
  const anchor = element("a", server.name, "quick-link");
  anchor.setAttribute("href", link);
  item.append(anchor, " ", statusBadge(server.status), " ", element("span", server.cloud, "meta"), " ");
  item.append(pinButton(server, true));
  return item;
}

function showPinned(server, pinned) {
  for (const button of holders(server).map((node) => node.querySelector("button.pin"))) {
    button?.setAttribute("aria-pressed", String(pinned));
    if (button) button.title = pinned ? "Unpin" : "Pin";
  }
}

function listPinned(server, holder, pinned) {
  const existing = [...pinnedList.children].find((item) => sameServer(item, server));
  if (pinned && !existing) {
    const link = holder.querySelector("a").getAttribute("href");
    pinnedList.append(pinnedItem({ ...server, status: server.status || holder.dataset.status }, link));
  } else if (!pinned && existing) {
    if (existing.contains(document.activeElement)) input.focus(); // its button is about to go
    existing.remove();
  }
  $("pinned").hidden = pinnedList.children.length === 0;
}

// Buttons whose request is on its way; not disabled meanwhile, which would take their focus.
const pinning = new WeakSet();

async function togglePin(button) {
  if (pinning.has(button)) return;
  pinning.add(button);
  const holder = button.closest("[data-id]");
  const server = { id: holder.dataset.id, cloud: holder.dataset.cloud, name: holder.dataset.name };
  const pin = button.getAttribute("aria-pressed") !== "true";
  const url = serverUrl(section.dataset.pins, server.id, server.cloud);
  try {
    const body = await call(url, { method: pin ? "PUT" : "DELETE" });
    fail("");
    showPinned(server, pin);
    listPinned({ ...server, ...body.server }, holder, pin);
    say(`${pin ? "Pinned" : "Unpinned"} ${server.name}`);
  } catch (error) {
    if (error.status === 401) window.location.reload();
    fail(`Could not ${pin ? "pin" : "unpin"} ${server.name}: ${error.message}`);
  } finally {
    pinning.delete(button);
  }
}

// -- the server panel -----------------------------------------------------------------------------

function detailsButtons() {
  return document.querySelectorAll("button.details");
}

function closePanel() {
  panel.toggle(false);
  for (const button of detailsButtons()) button.setAttribute("aria-expanded", "false");
  const back = opened && holders(opened).map((node) => node.querySelector("button.details")).find(Boolean);
  opened = null;
  back?.focus();
}

async function openPanel(button) {
  const holder = button.closest("[data-id]");
  if (button.getAttribute("aria-expanded") === "true") {
    closePanel();
    return;
  }
  const server = { id: holder.dataset.id, cloud: holder.dataset.cloud };
  for (const other of detailsButtons()) other.setAttribute("aria-expanded", String(other === button));
  opened = server;
  panel.loading(holder.dataset.name);
  panel.toggle(true);
  $("panel-title").focus(); // the drawer may cover the button, on a phone all of the list
  try {
    const body = await call(serverUrl(section.dataset.servers, server.id, server.cloud));
    if (opened === server) panel.show(body.server, body.console_page);
  } catch (error) {
    if (error.status === 401) window.location.reload();
    if (opened === server) panel.failed(error.message);
  }
}

// -- the keyboard path ----------------------------------------------------------------------------

function serverLinks() {
  const links = document.querySelectorAll("#pinned .quick-link, #recent .quick-link, #servers .server-link");
  return [...links].filter((link) => link.checkVisibility?.() ?? link.offsetParent !== null);
}

function typing(target) {
  return target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName);
}

function moveThroughLinks(event) {
  const links = serverLinks();
  const at = links.indexOf(document.activeElement);
  const fromSearch = document.activeElement === input;
  if (event.key === "ArrowDown" && (fromSearch || at >= 0)) {
    links[fromSearch ? 0 : at + 1]?.focus();
  } else if (event.key === "ArrowUp" && at >= 0) {
    (at === 0 ? input : links[at - 1]).focus();
  } else {
    return;
  }
  event.preventDefault(); // the page would scroll instead
}

function keydown(event) {
  if (event.altKey || event.ctrlKey || event.metaKey || event.defaultPrevented) return;
  if (event.key === "/" && !typing(event.target)) {
    event.preventDefault();
    input.focus();
    input.select();
  } else if (event.key === "Escape" && event.target === input && input.value) {
    event.preventDefault();
    input.value = "";
    search();
  } else if (event.key === "Escape" && panel.isOpen) {
    closePanel();
  } else if (event.key === "ArrowDown" || event.key === "ArrowUp") {
    moveThroughLinks(event);
  }
}

// -- wiring ---------------------------------------------------------------------------------------

// The reader's own time zone for "opened" times; the page says UTC.
for (const time of document.querySelectorAll("#recent time")) {
  time.replaceWith(timeElement(time.dateTime, { short: true }));
}

input.addEventListener("input", searchSoon);
cloudSelect?.addEventListener("change", () => {
  cloud = cloudSelect.value;
  search();
});
document.addEventListener("keydown", keydown);
section.addEventListener("click", (event) => {
  const button = event.target.closest("button");
  if (button?.classList.contains("pin")) togglePin(button);
  else if (button?.classList.contains("details")) openPanel(button);
});
$("panel-close").addEventListener("click", () => closePanel());
