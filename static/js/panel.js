// The server panel (#server-panel) on the list and both console pages: what the cloud says about
// one server, from GET /api/servers/<id>. Everything the cloud wrote goes in as textContent.

const timeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
const todayFormat = new Intl.DateTimeFormat(undefined, { timeStyle: "short" });
const recentFormat = new Intl.DateTimeFormat(undefined, {
  month: "short",
  day: "numeric",
  hour: "numeric",
  minute: "2-digit",
});

export function element(tag, text, className) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text) node.textContent = text;
  return node;
}

// A status badge: its words and its colour.
export function showStatus(badge, status) {
  badge.textContent = status;
  badge.className = `status status-${status.toLowerCase()}`;
}

export function statusBadge(status) {
  return element("span", status, `status status-${status.toLowerCase()}`);
}

// An ISO 8601 time as a <time> in the reader's own zone and words; as given if it does not parse.
// Short: only the time today, the day and time this year (the list's "opened" times).
export function timeElement(iso, { short = false } = {}) {
  const node = element("time", iso);
  const when = new Date(iso);
  if (iso && !Number.isNaN(when.getTime())) {
    const now = new Date();
    let format = timeFormat;
    if (short && when.toDateString() === now.toDateString()) format = todayFormat;
    else if (short && when.getFullYear() === now.getFullYear()) format = recentFormat;
    node.dateTime = iso;
    node.textContent = format.format(when);
  }
  return node;
}

function none(text = "none") {
  return element("span", text, "none");
}

function listOf(items) {
  const list = element("ul");
  list.append(...items.map((item) => element("li", item)));
  return list;
}

function metadata(pairs) {
  const entries = Object.entries(pairs || {});
  if (!entries.length) return none();
  const list = element("ul");
  for (const [key, value] of entries) {
    const item = element("li");
    item.append(element("code", key), `: ${value}`);
    list.append(item);
  }
  return list;
}

function fields(server) {
  return [
    ["Status", statusBadge(server.status)],
    ["Task state", server.task_state || none()],
    ["Power state", server.power_state || none("unknown")],
    ["VM state", server.vm_state || none("unknown")],
    ["Flavor", server.flavor || none("unknown")],
    ["Image", server.image || none("none (booted from volume)")],
    ["Addresses", server.addresses?.length ? listOf(server.addresses) : none()],
    ["Zone", server.availability_zone || none()],
    ["Cloud", server.cloud],
    ["ID", element("code", server.id)],
    ["Created", server.created ? timeElement(server.created) : none("unknown")],
    ["Updated", server.updated ? timeElement(server.updated) : none("unknown")],
    ["Metadata", metadata(server.metadata)],
  ];
}

// The panel's parts, found once; `link` shows an "Open console" link (the list wants one).
export function serverPanel(root = document.getElementById("server-panel"), { link = false } = {}) {
  const part = (name) => root.querySelector(`[data-part="${name}"]`);
  const [title, message, fault, list, open] = ["title", "message", "fault", "fields", "open"].map(part);

  function say(text, failed = false) {
    message.textContent = text;
    message.classList.toggle("failed", failed);
    message.hidden = !text;
  }

  return {
    root,
    get isOpen() {
      return !root.hidden;
    },
    loading(name) {
      title.textContent = name;
      fault.hidden = true;
      list.replaceChildren();
      if (open) open.hidden = true;
      say("Loading details…");
    },
    failed(text) {
      say(text, true);
    },
    show(server, consolePage = "") {
      title.textContent = server.name;
      say("");
      fault.hidden = !server.fault;
      if (server.fault) {
        const code = server.fault.code ? ` ${server.fault.code}` : "";
        fault.textContent = `Fault${code}: ${server.fault.message}`;
      }
      list.replaceChildren(...fields(server).flatMap(([name, value]) => [element("dt", name), dd(value)]));
      if (open) {
        open.hidden = !(link && consolePage);
        if (consolePage) open.setAttribute("href", consolePage);
      }
    },
    toggle(show) {
      root.hidden = !show;
    },
  };
}

function dd(value) {
  const node = element("dd");
  node.append(value);
  return node;
}
