"""Where a request's changes reach the database: once, after its route (or error handler) answered.

Services only stage (``db.session.add``, ``execute``); nothing below the web layer commits. A
request is one unit of work: a change and its audit record are committed together, before the
answer leaves, or not at all. The error exit (``broker.web.errors``) rolls back what a failed
request staged, so a change that went wrong half-way leaves nothing behind, while a refusal that
was answered on purpose (403, 409, a cloud's 502) keeps its audit record.
"""

from __future__ import annotations

from flask import Flask
from flask import Response
from flask import current_app
from sqlalchemy.exc import DBAPIError

from broker.extensions import db
from broker.web.errors import handle_database
from broker.web.errors import handle_unexpected


def commit_request(response: Response) -> Response:
    """Commit what the request staged; if that fails, none of it stays and the answer is the error's."""
    if not db.session.registry.has():
        return response  # it never used the database (static files, /healthz): nothing to commit
    try:
        db.session.commit()
    except DBAPIError as exc:
        return current_app.make_response(handle_database(exc))
    except Exception as exc:
        return current_app.make_response(handle_unexpected(exc))
    return response


def register_commits(app: Flask) -> None:
    """Registered after every other hook, so it runs first of them: the answer they see is the final one."""
    app.after_request(commit_request)
