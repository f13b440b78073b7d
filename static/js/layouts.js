// Keyboard layouts for Type text: the physical key (KeyboardEvent.code) and modifiers that type a
// character on a server set to a layout. QEMU takes a key's scancode as it comes and the server's
// own layout makes the character, so a text is sent as the keys someone with that keyboard would
// press. The tables follow XKB's layouts (which a Linux server's desktop and, through
// console-setup, its text console use), on a 105-key keyboard.

// X11 keysyms (noVNC's core/input/keysym.js). Servers that take scancodes read the code; the
// keysym still goes along for those that do not.
const XK_TAB = 0xff09;
const XK_RETURN = 0xff0d;
const XK_SHIFT_L = 0xffe1;
const XK_ISO_LEVEL3_SHIFT = 0xfe03; // AltGr
const XK_EURO_SIGN = 0x20ac;
const UNICODE_KEYSYMS = 0x1000000;
// The keysyms of the dead keys the tables use, by the character they make before Space.
const DEAD_KEYSYMS = { "`": 0xfe50, "´": 0xfe51, "^": 0xfe52, "~": 0xfe53, "¨": 0xfe57 };

// Levels of a key, in the order a table lists them: alone, with Shift, with AltGr, with both.
const LEVELS = [[], ["ShiftLeft"], ["AltRight"], ["ShiftLeft", "AltRight"]];
const MODIFIER_KEYSYMS = { ShiftLeft: XK_SHIFT_L, AltRight: XK_ISO_LEVEL3_SHIFT };
// Typed the same on every layout.
const COMMON = { " ": "Space", "\n": "Enter", "\t": "Tab" };
const COMMON_KEYSYMS = { Space: 0x20, Enter: XK_RETURN, Tab: XK_TAB };

// The letter keys as a US keyboard has them; a layout's own keys replace some.
const LETTER_KEYS = Object.fromEntries(
  [..."abcdefghijklmnopqrstuvwxyz"].map((letter) => [`Key${letter.toUpperCase()}`, letter + letter.toUpperCase()]),
);

// What each key types: the characters of its levels (see LEVELS) in a string; " " where a level
// types nothing the table offers. `dead`: characters whose key is a dead key on that layout,
// typed as that key and then Space.
const US = {
  ...LETTER_KEYS,
  Backquote: "`~",
  Digit1: "1!",
  Digit2: "2@",
  Digit3: "3#",
  Digit4: "4$",
  Digit5: "5%",
  Digit6: "6^",
  Digit7: "7&",
  Digit8: "8*",
  Digit9: "9(",
  Digit0: "0)",
  Minus: "-_",
  Equal: "=+",
  BracketLeft: "[{",
  BracketRight: "]}",
  Backslash: "\\|",
  Semicolon: ";:",
  Quote: "'\"",
  Comma: ",<",
  Period: ".>",
  Slash: "/?",
};

const GB = {
  ...US,
  Backquote: "`¬",
  Digit2: '2"',
  Digit3: "3£",
  Digit4: "4$€",
  Quote: "'@",
  Backslash: "#~",
  IntlBackslash: "\\|",
};

const DE = {
  ...LETTER_KEYS,
  Backquote: "^°",
  Digit1: "1!",
  Digit2: '2"²',
  Digit3: "3§³",
  Digit4: "4$",
  Digit5: "5%",
  Digit6: "6&",
  Digit7: "7/{",
  Digit8: "8([",
  Digit9: "9)]",
  Digit0: "0=}",
  Minus: "ß?\\",
  Equal: "´`",
  KeyQ: "qQ@",
  KeyE: "eE€",
  KeyY: "zZ",
  BracketLeft: "üÜ",
  BracketRight: "+*~",
  Semicolon: "öÖ",
  Quote: "äÄ",
  Backslash: "#'",
  IntlBackslash: "<>|",
  KeyZ: "yY",
  KeyM: "mMµ",
  Comma: ",;",
  Period: ".:",
  Slash: "-_",
};

// AZERTY. Its dead circumflex and diaeresis key is left out: AltGr+9 types "^" without it.
const FR = {
  ...LETTER_KEYS,
  Backquote: "²",
  Digit1: "&1",
  Digit2: "é2~",
  Digit3: '"3#',
  Digit4: "'4{",
  Digit5: "(5[",
  Digit6: "-6|",
  Digit7: "è7`",
  Digit8: "_8\\",
  Digit9: "ç9^",
  Digit0: "à0@",
  Minus: ")°]",
  Equal: "=+}",
  KeyQ: "aA",
  KeyW: "zZ",
  KeyE: "eE€",
  BracketRight: "$£¤",
  KeyA: "qQ",
  Semicolon: "mM",
  Quote: "ù%",
  Backslash: "*µ",
  IntlBackslash: "<>",
  KeyZ: "wW",
  KeyM: ",?",
  Comma: ";.",
  Period: ":/",
  Slash: "!§",
};

const TABLES = {
  us: { name: "English (US)", keys: US, dead: "" },
  gb: { name: "English (UK)", keys: GB, dead: "" },
  de: { name: "German", keys: DE, dead: "^´`" },
  fr: { name: "French (AZERTY)", keys: FR, dead: "" },
};

export const DEFAULT_LAYOUT = "us";

// Layout id -> the name a person picks it by.
export const LAYOUTS = Object.fromEntries(Object.entries(TABLES).map(([id, { name }]) => [id, name]));

// Character -> {code, modifiers, dead}. A character two keys type goes by the one with fewer
// modifiers (the first listed among equals).
function strokes({ keys, dead }) {
  const found = new Map();
  LEVELS.forEach((modifiers, level) => {
    for (const [code, chars] of Object.entries(keys)) {
      const char = [...chars][level];
      if (char && char !== " " && !found.has(char)) found.set(char, { code, modifiers, dead: dead.includes(char) });
    }
  });
  return found;
}

const STROKES = Object.fromEntries(Object.entries(TABLES).map(([id, table]) => [id, strokes(table)]));

// The keysym of a printable character: Latin-1 keysyms equal the code point, the rest are Unicode ones.
function keysymOf(char) {
  const point = char.codePointAt(0);
  if (point <= 0xff) return point;
  return char === "€" ? XK_EURO_SIGN : UNICODE_KEYSYMS + point;
}

function press(keysym, code) {
  return [
    [keysym, code, true],
    [keysym, code, false],
  ];
}

// The key events, [keysym, code, down] each, that type `char` on a server with `layout`; null when
// that layout has no key for it. Modifiers go down before the key and up after it.
export function keyEvents(layout, char) {
  if (COMMON[char]) return press(COMMON_KEYSYMS[COMMON[char]], COMMON[char]);
  const stroke = STROKES[layout]?.get(char);
  if (!stroke) return null;
  const { code, modifiers, dead } = stroke;
  const held = modifiers.map((modifier) => [MODIFIER_KEYSYMS[modifier], modifier]);
  return [
    ...held.map(([keysym, modifier]) => [keysym, modifier, true]),
    ...press(dead ? DEAD_KEYSYMS[char] : keysymOf(char), code),
    ...held.reverse().map(([keysym, modifier]) => [keysym, modifier, false]),
    ...(dead ? press(COMMON_KEYSYMS.Space, "Space") : []),
  ];
}
