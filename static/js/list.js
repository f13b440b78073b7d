// Instant search on the server list: filters the rendered rows as you type,
// keeps ?q= in the address so the view can be bookmarked or shared.

const input = document.getElementById("q");
const rows = Array.from(document.querySelectorAll("#servers tbody tr"));
const haystacks = rows.map((row) => row.dataset.search);
const shown = document.getElementById("shown-count");
const noMatch = document.getElementById("no-match");

function filter() {
  const needle = input.value.trim().toLowerCase();
  let count = 0;
  for (let i = 0; i < rows.length; i += 1) {
    const hit = !needle || haystacks[i].includes(needle);
    if (rows[i].hidden === hit) rows[i].hidden = !hit;
    if (hit) count += 1;
  }
  shown.textContent = String(count);
  noMatch.hidden = count > 0 || rows.length === 0;
  const url = new URL(window.location.href);
  if (needle) url.searchParams.set("q", input.value.trim());
  else url.searchParams.delete("q");
  window.history.replaceState(null, "", url);
}

let pending = 0;
input.addEventListener("input", () => {
  cancelAnimationFrame(pending);
  pending = requestAnimationFrame(filter);
});
