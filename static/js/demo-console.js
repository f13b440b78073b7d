// The demo cloud's stand-in console: echoes what is typed, like a login prompt.
const screen = document.getElementById("screen");
screen.addEventListener("keydown", (event) => {
  if (event.key === "Enter") {
    screen.textContent += `\nLogin incorrect\n\n${screen.dataset.name} login: `;
  } else if (event.key === "Backspace") {
    screen.textContent = screen.textContent.replace(/[^\s:]$/, "");
  } else if (event.key.length === 1) {
    screen.textContent += event.key;
  } else {
    return;
  }
  event.preventDefault();
});
