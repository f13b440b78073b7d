// Instant search on the server list: asks /api/servers as you type (the broker
// holds the list in memory, so an answer takes milliseconds), renders the rows
// with textContent only, and keeps ?q= in the address for bookmarks.

const section = document.getElementById("server-list");
const input = document.getElementById("q");
const cloudSelect = document.getElementById("cloud-filter");
const tbody = document.querySelector("#servers tbody");
const shown = document.getElementById("shown-count");
const total = document.getElementById("total-count");
const moreHint = document.getElementById("more-hint");
const noMatch = document.getElementById("no-match");
const rows = Number(section.dataset.rows);
let controller = null;
let timer = 0;

function cell(text, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  td.textContent = text;
  return td;
}

function row(server) {
  const tr = document.createElement("tr");
  tr.dataset.status = server.status;
  const link = document.createElement("a");
  link.className = "server-link";
  const params = new URLSearchParams({ cloud: server.cloud });
  link.href = `${section.dataset.console}${encodeURIComponent(server.id)}?${params}`;
  link.textContent = server.name;
  const name = document.createElement("td");
  name.append(link);
  const status = document.createElement("span");
  status.className = `status status-${server.status.toLowerCase()}`;
  status.textContent = server.status;
  const statusCell = document.createElement("td");
  statusCell.append(status);
  tr.append(name, statusCell, cell(server.addresses.join(", ")), cell(server.availability_zone),
    cell(server.cloud), cell(server.id, "id"));
  return tr;
}

function render(body) {
  tbody.replaceChildren(...body.servers.map(row));
  shown.textContent = String(body.servers.length);
  total.textContent = String(body.total);
  moreHint.hidden = body.total <= body.servers.length;
  noMatch.hidden = body.servers.length > 0;
  noMatch.textContent = "No servers match this search.";
}

async function search() {
  const params = new URLSearchParams({ q: input.value.trim(), limit: String(rows) });
  if (cloudSelect && cloudSelect.value) params.set("cloud", cloudSelect.value);
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
    if (response.ok) render(await response.json());
  } catch (error) {
    if (error.name !== "AbortError") throw error;
  }
  const url = new URL(window.location.href);
  if (input.value.trim()) url.searchParams.set("q", input.value.trim());
  else url.searchParams.delete("q");
  window.history.replaceState(null, "", url);
}

input.addEventListener("input", () => {
  clearTimeout(timer);
  timer = setTimeout(search, 60);
});
cloudSelect?.addEventListener("change", search);
