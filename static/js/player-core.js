// The recording player's data and controls (/admin/recordings/<id>), whatever draws the screen: playback.json,
// the segments, the clock, play, pause, seek, speed and the index. A screen is the part that differs between
// a graphical recording (noVNC, player.js) and a serial one (xterm.js, serial-player.js):
//   screen.reset(info, segment) -> Promise: a blank screen as it stood at the start of `segment`, ready for bytes;
//   screen.write(bytes): the recorded server's bytes, in order;
//   screen.settleMs: after a seek point, how long the screen takes to be whole (0 when it is at once);
//   screen.chunk: the most bytes handed to it in one write while fast-forwarding.
// A seek resets the screen at the last segment before the target and writes everything up to it at once.
// Segments hold ">II" records (milliseconds since the start, length) each followed by its bytes.

const $ = (id) => document.getElementById(id);
const root = $("player");
const playButton = $("play");
const seekBar = $("seek");
const positionText = $("position");
const speedChoice = $("speed");
const statusText = $("player-status");
const eventList = $("recording-events");

// The longest wait between two looks at the clock: the slider moves at least this often.
const TICK_MS = 250;
const EVENT_NAMES = {
  connect: "Connected",
  typing: "Typing",
  "type-text": "Type text",
  "ctrl-alt-del": "Ctrl-Alt-Del",
  "hand-over": "Hand-over",
  join: "Joined",
  leave: "Left",
  observe: "Admin observing",
  resume: "Cloud's side resumed",
  resize: "Screen resized",
  power: "Power action",
  idle: "Idle",
  end: "Ended",
};

let screen = null;
let info = null; // playback.json: kind, init, segments, events, duration_ms
const segments = new Map(); // segment number -> promise of its records
let cursor = null; // {segment: index into info.segments, records, next: index of the next record}
let position = 0; // ms of recording time shown
let playing = false;
let clockStart = 0; // performance.now() when playing resumed
let positionAtStart = 0;
let timer = null;
let generation = 0; // bumps at every seek: a slower, older seek's work stops
let rate = 1; // the chosen speed

// -- segments -----------------------------------------------------------------------------------

function parseRecords(buffer) {
  const view = new DataView(buffer);
  const records = [];
  let at = 0;
  while (at + 8 <= buffer.byteLength) {
    const t = view.getUint32(at);
    const length = view.getUint32(at + 4);
    records.push({ t, data: new Uint8Array(buffer, at + 8, length) });
    at += 8 + length;
  }
  return records;
}

function loadSegment(index) {
  const number = info.segments[index].n;
  if (!segments.has(number)) {
    const loading = fetch(root.dataset.segments + number, { credentials: "same-origin" }).then((response) => {
      if (!response.ok) throw new Error(`segment ${number}: ${response.status}`);
      return response.arrayBuffer().then(parseRecords);
    });
    segments.set(number, loading);
    loading.catch(() => segments.delete(number));
  }
  return segments.get(number);
}

function segmentAt(ms) {
  let found = 0;
  info.segments.forEach((segment, index) => {
    if (segment.t <= ms) found = index;
  });
  return found;
}

// -- playing ------------------------------------------------------------------------------------

function now() {
  return playing ? Math.min(info.duration_ms, positionAtStart + (performance.now() - clockStart) * rate) : position;
}

// Hand the screen every record due by `until`, in chunks; false when the segment ran out first.
function deliverUntil(until) {
  let batch = [];
  let size = 0;
  const flush = () => {
    if (!batch.length) return;
    const joined = new Uint8Array(size);
    let at = 0;
    for (const part of batch) {
      joined.set(part, at);
      at += part.length;
    }
    screen.write(joined);
    batch = [];
    size = 0;
  };
  const { records } = cursor;
  while (cursor.next < records.length && records[cursor.next].t <= until) {
    batch.push(records[cursor.next].data);
    size += records[cursor.next].data.length;
    cursor.next += 1;
    if (size >= screen.chunk) flush();
  }
  flush();
  return cursor.next < records.length;
}

async function tick() {
  timer = null;
  const mine = generation;
  position = now();
  while (!deliverUntil(position)) {
    const following = cursor.segment + 1;
    if (following >= info.segments.length) break;
    const records = await loadSegment(following);
    if (mine !== generation) return;
    cursor = { segment: following, records, next: 0 };
    position = now();
  }
  showPosition();
  if (position >= info.duration_ms) {
    pause();
    say("End of the recording.");
    return;
  }
  if (!playing) return;
  const next = cursor.records[cursor.next];
  const due = next ? next.t : info.duration_ms;
  timer = setTimeout(tick, Math.min(Math.max(0, (due - position) / rate), TICK_MS));
  if (!next && cursor.segment + 1 < info.segments.length) loadSegment(cursor.segment + 1).catch(() => {});
}

function play() {
  if (position >= info.duration_ms) {
    seek(0).then(play);
    return;
  }
  playing = true;
  positionAtStart = position;
  clockStart = performance.now();
  playButton.textContent = "Pause";
  playButton.setAttribute("aria-pressed", "true");
  say("Playing.");
  tick();
}

function pause() {
  position = now();
  playing = false;
  clearTimeout(timer);
  timer = null;
  playButton.textContent = "Play";
  playButton.setAttribute("aria-pressed", "false");
}

// A fresh screen at the last seek point before `target`, written everything up to it without delays.
async function seek(target) {
  const mine = ++generation;
  const wasPlaying = playing;
  if (playing) pause();
  target = Math.max(0, Math.min(target, info.duration_ms));
  const index = segmentAt(target);
  say("Seeking…");
  const records = await loadSegment(index);
  if (mine !== generation) return;
  await screen.reset(info, info.segments[index]);
  if (mine !== generation) return;
  cursor = { segment: index, records, next: 0 };
  position = target;
  deliverUntil(Math.max(target, info.segments[index].t + screen.settleMs));
  showPosition();
  say("");
  if (wasPlaying) play();
}

// -- the page ---------------------------------------------------------------------------------------

function clock(ms) {
  const seconds = Math.floor(ms / 1000);
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = String(seconds % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

function showPosition() {
  seekBar.value = String(position);
  const text = `${clock(position)} / ${clock(info.duration_ms)}`;
  positionText.textContent = text;
  seekBar.setAttribute("aria-valuetext", text);
  root.dataset.position = String(Math.round(position));
}

function say(text) {
  statusText.textContent = text;
}

function describe(event) {
  const name = EVENT_NAMES[event.kind] || event.kind;
  const until = event.end ? ` until ${clock(event.end)}` : "";
  const detail = event.kind === "type-text" ? `${event.detail} characters` : event.detail;
  return `${clock(event.t)} ${name}${until}${detail ? `: ${detail}` : ""}`;
}

function listEvents() {
  const items = info.events.map((event) => {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = `event event-${event.kind}`;
    button.textContent = describe(event);
    button.dataset.t = String(event.t);
    button.addEventListener("click", () => seek(event.t));
    item.append(button);
    return item;
  });
  eventList.replaceChildren(...items);
}

async function start() {
  const response = await fetch(root.dataset.playback, { credentials: "same-origin" });
  if (!response.ok) {
    say(`The recording could not be loaded (${response.status}).`);
    return;
  }
  info = await response.json();
  seekBar.max = String(info.duration_ms);
  listEvents();
  if (!info.segments.length) {
    say("This recording holds no screen.");
    return;
  }
  await seek(0);
  playButton.disabled = false;
  seekBar.disabled = false;
  root.dataset.ready = "true";
  say("Ready. Play starts the recording; the index below jumps to what happened.");
}

function listen() {
  playButton.addEventListener("click", () => (playing ? pause() : play()));
  // The slider seeks where it is let go (and at each arrow key), not at every pixel of a drag.
  seekBar.addEventListener("change", () => seek(Number(seekBar.value)));
  seekBar.addEventListener("input", () => {
    positionText.textContent = `${clock(Number(seekBar.value))} / ${clock(info.duration_ms)}`;
  });
  speedChoice.addEventListener("change", () => {
    position = now(); // up to now at the old speed
    positionAtStart = position;
    clockStart = performance.now();
    rate = Number(speedChoice.value) || 1;
    if (playing) {
      clearTimeout(timer);
      tick();
    }
  });
}

// Play the page's recording on `drawing` (see the top of this file for what a screen does).
export function startPlayer(drawing) {
  screen = drawing;
  listen();
  start().catch((error) => say(`The recording could not be played: ${error.message}`));
}

// The element the screen draws into.
export const screenBox = $("player-screen");
