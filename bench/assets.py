"""What the relay-mode console page loads: bytes raw and gzipped, and how the broker serves them (compression, caching).

The walk starts at the page's HTML, follows its ``/static/`` references, the ES-module imports
of every script (static/js/viewer.js and the vendored noVNC modules it imports) and ``url()``
in style sheets, as a browser would load them. Each file is fetched twice: once without
compression for its size, once offering gzip and br as a browser does, to see what is sent.
"""

from __future__ import annotations

import gzip
import html
import re
from dataclasses import dataclass
from urllib.parse import urljoin
from urllib.parse import urlsplit

from bench.clients import BrokerClient
from bench.clients import expect
from bench.measure import JS_IMPORT
from bench.measure import STATIC_REF
from bench.report import Row
from bench.report import verdict

CSS_URL = re.compile(r"""url\(\s*["']?(?!data:)([^"')]+)["']?\s*\)""")
# A content hash in a file name (app.3f9a1c2e.css) or a version query (?v=...): safe to cache for good.
# A digest in the file name, in a query, or in the folder (/static/<digest of the folder>/...).
HASHED = re.compile(r"[.-][0-9a-f]{8,}\.\w+$|[?&](v|h|hash)=|^/static/[0-9a-f]{12}/")
BROWSER_ENCODINGS = "gzip, deflate, br"
BUDGET = 50 * 1024


@dataclass(frozen=True)
class Asset:
    """One response the page needs: its size raw and gzipped, and the headers that decide what a browser pays."""

    path: str
    kind: str  # html, css, viewer, novnc, js
    raw: int
    gzipped: int
    sent: int  # bytes on the wire when gzip and br are offered
    encoding: str
    cache_control: str
    etag: bool
    hashed: bool


def fetch(client: BrokerClient, ref: str) -> tuple[Asset, bytes]:
    """``ref`` uncompressed (its body and size), then as a browser asks for it (what is sent, and how)."""
    plain = expect(client.http.get(client.url + ref, headers={"Accept-Encoding": "identity"}, timeout=30))
    offered = expect(client.http.get(client.url + ref, headers={"Accept-Encoding": BROWSER_ENCODINGS}, stream=True))
    sent = len(offered.raw.read(decode_content=False))
    offered.close()
    path = urlsplit(ref).path
    asset = Asset(
        path=path,
        kind=kind_of(path),
        raw=len(plain.content),
        gzipped=len(gzip.compress(plain.content, 6)),
        sent=sent,
        encoding=offered.headers.get("Content-Encoding", ""),
        cache_control=offered.headers.get("Cache-Control", ""),
        etag="ETag" in offered.headers,
        hashed=bool(HASHED.search(ref)),
    )
    return asset, plain.content


def kind_of(path: str) -> str:
    """The part of the page a file belongs to, for the weight's breakdown."""
    if not path.startswith("/static/"):
        return "html"
    if "/vendor/novnc/" in path:
        return "novnc"
    if path.endswith("/viewer.js"):
        return "viewer.js"
    return path.rsplit(".", 1)[-1]


def references(path: str, body: bytes) -> list[str]:
    """What a browser loads next because of this file."""
    text = body.decode("utf-8", "replace")
    if path.endswith((".js", ".mjs")):
        return [urljoin(path, found) for found in JS_IMPORT.findall(text)]
    if path.endswith(".css"):
        return [urljoin(path, found) for found in CSS_URL.findall(text)]
    return [html.unescape(ref) for ref in STATIC_REF.findall(text)]


def walk(client: BrokerClient, page: str) -> list[Asset]:
    """The page and everything it loads, each once."""
    assets, queue, seen = [], [page], set()
    while queue:
        ref = queue.pop(0)
        path = urlsplit(ref).path
        if path in seen:
            continue
        seen.add(path)
        asset, body = fetch(client, ref)
        assets.append(asset)
        queue += references(path, body)
    return assets


def kilobytes(size: int) -> str:
    return f"{size / 1024:.1f} KB"


def weight_row(assets: list[Asset]) -> Row:
    """The page's weight raw and gzipped; the target is the page's own files as sent (noVNC's core apart)."""
    parts = {}
    for asset in assets:
        raw, gz = parts.get(asset.kind, (0, 0))
        parts[asset.kind] = (raw + asset.raw, gz + asset.gzipped)
    raw, gz, sent = (sum(getattr(a, name) for a in assets) for name in ("raw", "gzipped", "sent"))
    own = sum(a.sent for a in assets if a.kind != "novnc")
    novnc = sum(1 for a in assets if a.kind == "novnc")
    detail = " + ".join(f"{kind} {kilobytes(r)} / {kilobytes(g)}" for kind, (r, g) in parts.items())
    return Row(
        f"relay console page weight: HTML + {len(assets) - 1} files ({novnc} noVNC modules), raw / gzip -6",
        f"{kilobytes(raw)} / {kilobytes(gz)} ({detail}); sent as served: {kilobytes(sent)}, "
        f"of which the page's own files {kilobytes(own)}",
        "own files < 50 KB (as sent)",
        verdict(own < BUDGET, f"{own / BUDGET:.0%} of budget"),
    )


# Flask-Compress leaves smaller responses as they are.
MIN_COMPRESSED = 500


def compression_row(assets: list[Asset]) -> Row:
    """CSS and scripts must come compressed; the HTML page must not (a CSRF token beside visitor text: BREACH)."""
    statics = [a for a in assets if a.kind != "html" and a.raw >= MIN_COMPRESSED]
    compressed = [a for a in statics if a.encoding]
    pages = [a for a in assets if a.kind == "html"]
    encodings = sorted({a.encoding for a in compressed})
    value = (
        f"{len(compressed)} of {len(statics)} CSS and script files of {MIN_COMPRESSED} B or more compressed "
        f"({', '.join(encodings) or 'none'}) when asked with Accept-Encoding: {BROWSER_ENCODINGS}; "
        f"HTML pages compressed: {sum(bool(a.encoding) for a in pages)} of {len(pages)} (none, on purpose)"
    )
    ok = len(compressed) == len(statics) and not any(a.encoding for a in pages)
    return Row("relay console page: served compressed", value, "gzip or br", verdict(ok))


def caching_row(assets: list[Asset]) -> Row:
    statics = [a for a in assets if a.kind != "html"]
    hashed = sum(a.hashed for a in statics)
    etags = sum(a.etag for a in statics)
    controls = sorted({a.cache_control or "none" for a in statics})
    forever = sum("immutable" in a.cache_control or "max-age=31536000" in a.cache_control for a in statics)
    value = (
        f"{hashed} of {len(statics)} static files under hashed names (e.g. {statics[0].path}); "
        f"Cache-Control: {' | '.join(controls)}; ETag on {etags}; {forever} cacheable for good, "
        f"so a revisit asks again for {len(statics) - forever}"
    )
    return Row(
        "relay console page: static files cacheable under hashed names",
        value,
        "hashed names, long max-age",
        verdict(hashed == forever == len(statics)),
    )


def rows(client: BrokerClient, server: str, cloud: str) -> list[Row]:
    """Weight, compression and caching of the relay-mode console page."""
    assets = walk(client, f"/console/{server}?cloud={cloud}")
    return [weight_row(assets), compression_row(assets), caching_row(assets)]
