// The player of a graphical recording: noVNC's own RFB core draws the recorded screen. It is given a
// WebSocket-like channel that plays the server's side of RFB 3.8 (version, security None, the recorded
// ServerInit at the segment's screen size) and then the recorded bytes the player hands it
// (player-core.js: the data, the clock and the controls).

import RFB from "../vendor/novnc/core/rfb.js";
import { screenBox } from "./player-core.js";
import { startPlayer } from "./player-core.js";

const VERSION = new TextEncoder().encode("RFB 003.008\n");

// -- the server's side of RFB, played to noVNC ----------------------------------------------------

class RecordedChannel {
  constructor(serverInit) {
    this.binaryType = "arraybuffer";
    this.protocol = "";
    this.readyState = "connecting";
    this.onopen = null;
    this.onmessage = null;
    this.onclose = null;
    this.onerror = null;
    this.replies = 0;
    this.serverInit = serverInit;
    this.ready = new Promise((resolve) => (this.started = resolve));
    setTimeout(() => {
      this.readyState = "open";
      this.onopen?.();
      this.deliver(VERSION);
    }, 0);
  }

  // What noVNC sends: its half of the handshake, then requests a recording has nothing to answer. The
  // answers come from a task of their own, as a socket's would: noVNC sends from inside its message handler.
  send() {
    this.replies += 1;
    const replies = this.replies;
    setTimeout(() => {
      if (replies === 1) this.deliver(Uint8Array.of(1, 1)); // one security type: None
      else if (replies === 2) this.deliver(Uint8Array.of(0, 0, 0, 0)); // SecurityResult OK
      else if (replies === 3) {
        this.deliver(this.serverInit); // after ClientInit
        this.started();
      }
    }, 0);
  }

  close() {
    if (this.readyState === "closed") return;
    this.readyState = "closed";
    setTimeout(() => this.onclose?.({ code: 1000, reason: "", wasClean: true }), 0);
  }

  deliver(bytes) {
    if (this.readyState !== "open") return;
    this.onmessage?.({ data: bytes.slice().buffer });
  }
}

function serverInitFor(info, segment) {
  const init = Uint8Array.from(atob(info.init), (c) => c.charCodeAt(0));
  const view = new DataView(init.buffer);
  view.setUint16(0, segment.width);
  view.setUint16(2, segment.height);
  return init;
}

// -- the screen -----------------------------------------------------------------------------------

let rfb = null;
let channel = null;

const screen = {
  // noVNC's receive queue grows to 40 MiB at most: fast-forwarding hands it 1 MiB at a time.
  chunk: 1 << 20,
  // A seek to just after a seek point (or the start) shows the screen as it stood this long after it: the full
  // screen the relay asked for there arrives in pieces over some milliseconds, and before it the canvas is black.
  settleMs: 1000,

  // A fresh RFB at the segment's screen size, once its handshake is through.
  reset(info, segment) {
    if (rfb) rfb.disconnect();
    const holder = document.createElement("div");
    holder.className = "player-canvas";
    screenBox.replaceChildren(holder);
    channel = new RecordedChannel(serverInitFor(info, segment));
    rfb = new RFB(holder, channel, { shared: true });
    rfb.viewOnly = true;
    rfb.scaleViewport = true;
    rfb.focusOnClick = false;
    return channel.ready;
  },

  write(bytes) {
    channel.deliver(bytes);
  },
};

startPlayer(screen);
