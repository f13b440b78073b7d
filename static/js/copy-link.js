// "Copy link" on both console pages: the broker's own link to the console, never a token URL.
// Browsers refuse the clipboard API on plain http (other than localhost): then a hidden field.

export async function copyLink(link, button) {
  try {
    await navigator.clipboard.writeText(link);
  } catch {
    const field = Object.assign(document.createElement("textarea"), { value: link });
    document.body.append(field);
    field.select();
    document.execCommand("copy");
    field.remove();
  }
  button.textContent = "Link copied";
  setTimeout(() => (button.textContent = "Copy link"), 2000);
}
