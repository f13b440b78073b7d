"""What a request carries in: the ``cloud`` parameter, small JSON bodies, where a navigation started."""

from __future__ import annotations

import json

from flask import abort
from flask import request

from broker.config import CONSOLE_TYPES


def cloud_arg() -> str | None:
    """The ``?cloud=`` parameter, or None when it is absent or empty (every cloud)."""
    return request.args.get("cloud") or None


def console_type_arg() -> str:
    """The ``?type=`` parameter: a console type (novnc when absent); anything else is a 400 that lists them."""
    kind = request.args.get("type") or "novnc"
    if kind not in CONSOLE_TYPES:
        abort(400, description=f'"type" must be one of {", ".join(CONSOLE_TYPES)}.')
    return kind


def json_object(limit: int, fields: set[str], shape: str | None = None) -> dict:
    """The body as a JSON object of at most ``limit`` bytes with only ``fields``, each a string.

    An empty body is ``{}``. Anything else is a 400 that says ``shape`` (what the body must be),
    never a traceback: the browser's own page sends these, so nothing else needs a kinder answer.
    The Content-Type is not checked; the body is.
    """
    shape = shape or f"a JSON object with string fields {', '.join(sorted(fields))}"
    raw = request.get_data(cache=False)
    # An empty body first: only bytes that say something count against the limit.
    if not raw.strip():
        return {}
    if len(raw) > limit:
        abort(400, description=f"The request body must be a small JSON object (at most {limit} bytes).")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        abort(400, description="The request body is not valid JSON.")
    if not isinstance(body, dict) or set(body) - fields or not all(isinstance(v, str) for v in body.values()):
        abort(400, description=f"The request body must be {shape}.")
    return body


def from_this_site() -> bool:
    """The browser says this navigation started on a page of this broker.

    Only then may a GET mint: a link on another site, in a chat or in a mail, and an old
    browser that sends no Sec-Fetch-Site, get the console page, which mints after its own POST.
    """
    return request.headers.get("Sec-Fetch-Site") == "same-origin"
