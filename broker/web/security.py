"""Security headers on every response, and the Content-Security-Policy for console frames."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask
from flask import Response
from flask import g
from flask import request

# xterm.js (the serial console) writes its own <style> elements and style attributes at run time,
# with colours and cell sizes it measures: no hash or nonce can name them. Only that page allows
# inline styles; scripts stay 'self' everywhere.
STRICT_STYLES = "style-src 'self'"
INLINE_STYLES = "style-src 'self' 'unsafe-inline'"


def frame_sources(console_hosts: tuple[str, ...], demo: bool) -> str:
    """``frame-src``: only the console hosts (any port), or this site in demo mode."""
    if console_hosts:
        return " ".join(f"http://{h}:* https://{h}:*" for h in console_hosts)
    if demo:
        return "'self'"
    # No allow-list configured: any http(s) console, never javascript:/data: frames.
    return "http: https:"


def page_host() -> str:
    """The host name (no port) this request was made to, IPv6 in brackets: what {host} stands for."""
    host = urlsplit("//" + request.host).hostname or ""
    return f"[{host}]" if ":" in host else host


def connect_sources(relay_url: str | None) -> str:
    """``connect-src``: this origin (its ws: and wss: included), and the relay when it listens elsewhere."""
    if not relay_url:
        return "'self'"
    parts = urlsplit(relay_url)
    return f"'self' {parts.scheme}://{parts.netloc}"


def content_security_policy(frame_src: str, form_origins: tuple[str, ...] = (), connect_src: str = "'self'") -> str:
    return "; ".join(
        (
            "default-src 'self'",
            "script-src 'self'",
            STRICT_STYLES,
            "img-src 'self' data:",
            f"connect-src {connect_src}",
            f"frame-src {frame_src}",
            "frame-ancestors 'self'",
            # A form's redirect counts too: signing out of an OIDC session ends at the provider.
            " ".join(("form-action 'self'", *form_origins)),
            "base-uri 'none'",
            "object-src 'none'",
        )
    )


def allow_inline_styles() -> None:
    """This response's page runs xterm.js: its policy allows inline styles (and nothing else more)."""
    g.inline_styles = True


def register_security_headers(
    app: Flask,
    console_hosts: tuple[str, ...],
    demo: bool,
    form_origins: tuple[str, ...] = (),
    relay_url: str | None = None,
) -> None:
    policy = content_security_policy(frame_sources(console_hosts, demo), form_origins, connect_sources(relay_url))
    terminal_policy = policy.replace(STRICT_STYLES, INLINE_STYLES)
    # A relay on another port of whatever host the page was opened with is named per request.
    per_host = "{host}" in policy

    @app.after_request
    def add_headers(response: Response) -> Response:
        headers = response.headers
        # Membership tests, not setdefault: werkzeug's setdefault raises and catches a KeyError for a missing
        # header, which costs more than the rest of this hook (it runs on every response).
        if "Content-Security-Policy" not in headers:
            chosen = terminal_policy if g.get("inline_styles") else policy
            headers["Content-Security-Policy"] = chosen.replace("{host}", page_host()) if per_host else chosen
        headers["X-Content-Type-Options"] = "nosniff"
        headers["Referrer-Policy"] = "no-referrer"
        if "X-Frame-Options" not in headers:
            headers["X-Frame-Options"] = "SAMEORIGIN"
        return response
