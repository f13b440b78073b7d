"""Errors the cloud client raises; each carries what a person may be shown and the upstream status.

How each kind reaches a person over HTTP (status and error slug) is the web layer's choice
(``broker.web.errors``), not the client's.
"""

from __future__ import annotations


class CloudError(Exception):
    """A call to the cloud failed. ``message`` is safe to show; it never holds a token."""

    def __init__(self, message: str, *, upstream_status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.upstream_status = upstream_status
        self.retry_after = retry_after


class ServerNotFound(CloudError):
    """404: no such server in this project."""


class ServerNotReady(CloudError):
    """409: the server exists but cannot give a console (stopped, building, shelved)."""


class ConsoleUnavailable(CloudError):
    """400/501: the cloud has no noVNC console for this server (VNC off, type unsupported)."""


class CloudRefused(CloudError):
    """401/403 after re-authentication: the service credentials are wrong or lack rights."""


class ActionForbidden(CloudRefused):
    """403 on a server action: the cloud's policy does not let the broker's account do it."""


class CloudUnreachable(CloudError):
    """Connection refused or reset, DNS failure, Keystone down."""


class CircuitOpen(CloudUnreachable):
    """The broker stopped calling a failing cloud for a few seconds (its circuit breaker is open)."""


class CloudTimeout(CloudError):
    """The cloud did not answer within the configured timeout."""


class CloudBusy(CloudError):
    """413/429/503 from the cloud: try again later (``retry_after`` seconds when given)."""


class CloudBusyHere(CloudBusy):
    """Too many of the broker's own calls wait on this cloud already (its bulkhead is full)."""


class CloudBadResponse(CloudError):
    """The cloud answered with something that is not what its API promises."""


class CloudPending(CloudError):
    """The cloud has not answered within the broker's wait; its call goes on in the background."""


class ServerUnconfirmed(CloudError):
    """The broker's details of a server are out of date and the cloud could not confirm them."""
