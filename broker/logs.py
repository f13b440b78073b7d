"""Logging to stdout for gunicorn, with query strings cut from request lines.

Console URLs carry their token in the query string, and the demo console page is
served by the broker itself, so request logs must never show a query string.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import TextIO

QUERY = re.compile(r"\?[^\s\"]*")


class RedactQueryStrings(logging.Filter):
    """Replace ``?...`` in a log record's message and arguments with ``?<redacted>``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = QUERY.sub("?<redacted>", record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(QUERY.sub("?<redacted>", a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            # gunicorn's access log passes its atoms as a mapping: "r" is the request line, "q" the query.
            for key, value in list(record.args.items()):
                if isinstance(value, str):
                    record.args[key] = "<redacted>" if key == "q" and value else QUERY.sub("?<redacted>", value)
        return True


def configure_logging(stream: TextIO | None = None) -> None:
    """Broker logs at INFO to ``stream`` (stdout for servers, stderr for the CLI); request logs redacted."""
    logger = logging.getLogger("broker")
    if not logger.handlers:
        handler = logging.StreamHandler(stream or sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    for name in ("werkzeug", "gunicorn.access"):
        target = logging.getLogger(name)
        if not any(isinstance(f, RedactQueryStrings) for f in target.filters):
            target.addFilter(RedactQueryStrings())
