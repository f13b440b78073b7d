// The player of a serial recording: xterm.js shows what the server printed, as the serial console page
// did (player-core.js: the data, the clock and the controls). A serial recording has no seek points but
// its start: a seek starts a fresh terminal and writes it all the text up to the point at once (text is
// cheap to replay). Nothing typed is in a recording, so the terminal takes no input.

import { FitAddon } from "../vendor/xterm/addon-fit.mjs";
import { Terminal } from "../vendor/xterm/xterm.mjs";
import { screenBox } from "./player-core.js";
import { startPlayer } from "./player-core.js";

let terminal = null;
let fit = null;

const screen = {
  chunk: 1 << 20,
  settleMs: 0,

  // A fresh terminal rather than a reset one: a reset leaves xterm.js's queued writes (a seek's megabytes) to
  // land after it.
  reset() {
    terminal?.dispose();
    const holder = document.createElement("div");
    holder.className = "player-canvas player-terminal";
    screenBox.replaceChildren(holder);
    terminal = new Terminal({
      disableStdin: true,
      cursorBlink: false,
      scrollback: 10000,
      fontFamily: '"DejaVu Sans Mono", monospace',
      fontSize: 14,
      theme: { background: "#1e1e1e" },
    });
    fit = new FitAddon();
    terminal.loadAddon(fit);
    terminal.open(holder);
    fit.fit();
    return Promise.resolve();
  },

  write(bytes) {
    terminal.write(bytes);
  },
};

new ResizeObserver(() => fit?.fit()).observe(screenBox);
startPlayer(screen);
