"""Static files under a URL that changes with their content: cached for a year, sent compressed.

Every page's CSS and scripts (the relay viewer's 50-odd noVNC modules among them) are served
under ``/static/<version>/``, where the version is a digest of the whole static folder. A
browser keeps them until the folder changes; the ES modules' relative imports stay under the
same versioned prefix, so no build step is needed to rename them. Only CSS and JavaScript are
compressed: an HTML page holds a CSRF token next to text a visitor controls (BREACH).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from flask import Flask
from flask import Response
from flask import request
from flask_compress import Compress

YEAR = 365 * 24 * 3600
COMPRESSED = ["text/css", "text/javascript", "application/javascript"]

compress = Compress()


def static_version(folder: str | Path) -> str:
    """A digest of every file's path and content under ``folder``: the same on every instance of one release."""
    digest = hashlib.sha256()
    root = Path(folder)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def register_assets(app: Flask) -> None:
    """Year-long, immutable caching of the versioned static files, and compression of CSS and scripts."""
    app.config.update(
        SEND_FILE_MAX_AGE_DEFAULT=YEAR,
        COMPRESS_MIMETYPES=COMPRESSED,
        COMPRESS_ALGORITHM=["br", "gzip"],
        # Static files are sent as streams: the same two choices (the default there leaves gzip out).
        COMPRESS_ALGORITHM_STREAMING=["br", "gzip"],
    )
    compress.init_app(app)

    @app.after_request
    def cache_forever(response: Response) -> Response:
        if request.endpoint == "static" and response.status_code == 200:
            response.headers["Cache-Control"] = f"public, max-age={YEAR}, immutable"
        return response
