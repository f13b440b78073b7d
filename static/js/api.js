// JSON calls to the broker's own API, shared by the list and both console pages: the CSRF token
// from the page's meta tag, and one error type that carries the API's code and message.

const csrfToken = () => document.querySelector('meta[name="csrf-token"]')?.content ?? "";

export class ApiError extends Error {
  constructor(status, error = {}) {
    const fallback = status ? `The broker answered ${status}.` : "The broker cannot be reached.";
    super(error.message || fallback);
    this.status = status; // 0: no answer at all
    this.code = error.code || "";
    this.error = error;
  }
}

export async function call(url, { method = "GET", body } = {}) {
  const headers = { "X-CSRFToken": csrfToken() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url, {
      method,
      headers,
      credentials: "same-origin",
      cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0);
  }
  // Not JSON (a 204, or a proxy's error page): the status says enough.
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, data.error);
  return data;
}

// `/api/servers/<id>?cloud=<cloud>`, or the pins path, for one server.
export function serverUrl(base, id, cloud) {
  return `${base}/${encodeURIComponent(id)}?${new URLSearchParams({ cloud })}`;
}
