// Instant search on the server list: asks /api/servers as you type (the broker
// holds the list in memory, so an answer takes milliseconds) and rebuilds what
// templates/servers/list.html renders (cloud notices, counts, rows, the empty-state
// line) with textContent only. Keeps ?q= and ?cloud= in the address for bookmarks.

const section = document.getElementById("server-list");
const input = document.getElementById("q");
const cloudSelect = document.getElementById("cloud-filter");
const notices = document.getElementById("cloud-notices");
const tbody = document.querySelector("#servers tbody");
const shown = document.getElementById("shown-count");
const total = document.getElementById("total-count");
const moreHint = document.getElementById("more-hint");
const noMatch = document.getElementById("no-match");
const rows = Number(section.dataset.rows);
// The page's ?cloud= narrowing, until the cloud chooser changes it.
let cloud = section.dataset.cloud;
let controller = null;
let timer = 0;

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text) node.textContent = text;
  return node;
}

function serverRow(server) {
  const tr = document.createElement("tr");
  tr.dataset.status = server.status;
  const link = element("a", server.name, "server-link");
  link.setAttribute("href", server.console_page);
  const name = document.createElement("td");
  name.append(link);
  const status = document.createElement("td");
  status.append(element("span", server.status, `status status-${server.status.toLowerCase()}`));
  tr.append(
    name,
    status,
    element("td", server.addresses.join(", ")),
    element("td", server.availability_zone),
    element("td", server.cloud),
    element("td", server.id, "id"),
  );
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

input.addEventListener("input", () => {
  clearTimeout(timer);
  timer = setTimeout(search, 60);
});
cloudSelect?.addEventListener("change", () => {
  cloud = cloudSelect.value;
  search();
});
