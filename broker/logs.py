"""Logging to stdout for gunicorn, as text or one JSON object a line, with query strings cut from request lines.

Console URLs carry their token in the query string, and the demo console page is
served by the broker itself, so request logs must never show a query string. Every
line logged during a request carries its request ID (``-`` outside requests).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC
from datetime import datetime
from typing import TextIO

from flask import g
from flask import has_app_context

QUERY = re.compile(r"\?[^\s\"]*")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
# Loggers whose lines are request lines: the dev server's and gunicorn's access log.
REQUEST_LOGGERS = ("werkzeug", "gunicorn.access")


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


class RequestId(logging.Filter):
    """Give every record ``request_id``: the current request's, or ``-`` outside a request."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):
            record.request_id = (g.get("request_id") if has_app_context() else None) or access_request_id(record)
        return True


def access_request_id(record: logging.LogRecord) -> str:
    """gunicorn writes its access line after the request: the ID is then the response's header."""
    if isinstance(record.args, dict):
        return str(record.args.get("{x-request-id}o") or "-")
    return "-"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO-8601), level, logger, message, request_id, exception."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False)


def formatter(fmt: str) -> logging.Formatter:
    """The formatter for ``BROKER_LOG_FORMAT``: ``json`` or ``text``."""
    return JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)


def use_format(handler: logging.Handler, fmt: str) -> None:
    """Make ``handler`` write ``fmt`` lines that carry the request ID."""
    handler.setFormatter(formatter(fmt))
    if not any(isinstance(f, RequestId) for f in handler.filters):
        handler.addFilter(RequestId())


def broker_handler(logger: logging.Logger) -> logging.StreamHandler | None:
    """The handler ``configure_logging`` gave ``logger``, if any."""
    return next((h for h in logger.handlers if getattr(h, "_broker", False)), None)


def configure_logging(stream: TextIO | None = None, fmt: str = "text") -> None:
    """Broker logs at INFO to ``stream`` (stdout for servers, stderr for the CLI) as ``fmt``; request logs redacted."""
    logger = logging.getLogger("broker")
    handler = broker_handler(logger)
    if handler is None:
        handler = logging.StreamHandler(stream or sys.stdout)
        handler._broker = True
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    use_format(handler, fmt)
    for name in REQUEST_LOGGERS:
        target = logging.getLogger(name)
        if not any(isinstance(f, RedactQueryStrings) for f in target.filters):
            target.addFilter(RedactQueryStrings())
    if fmt == "json":
        # gunicorn set up its handlers in the master, in text; a worker's lines are JSON too.
        for name in ("gunicorn.error", "gunicorn.access"):
            use_json(logging.getLogger(name))


def use_json(logger: logging.Logger) -> None:
    """Every handler of ``logger`` writes JSON lines (gunicorn's error and access logs)."""
    for handler in logger.handlers:
        use_format(handler, "json")
