"""The compute client: lists servers and mints noVNC console URLs through keystoneauth1.

One keystoneauth1 Session per cloud, so one Keystone token serves every call until it
nears expiry and a 401 re-authenticates once. Every call has a connect and a read
timeout; every failure becomes a :mod:`broker.cloud.errors` type with a message that
is safe to show. This module never imports Flask.
"""

from __future__ import annotations

import functools
import itertools
import logging
import re
import threading
import time
import unicodedata
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qs
from urllib.parse import urlsplit

import requests
from keystoneauth1 import adapter as ks_adapter
from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import session as ks_session

from broker import metrics
from broker.cloud import errors
from broker.cloud.health import Finding
from broker.cloud.health import Health
from broker.cloud.health import describe_identity
from broker.cloud.resilience import Bulkhead
from broker.cloud.resilience import CircuitBreaker
from broker.cloud.resilience import RetryPolicy
from broker.cloud.types import Console
from broker.cloud.types import Details
from broker.cloud.types import ServerInfo
from broker.cloud.types import Timeouts

log = logging.getLogger(__name__)
# What the clouds said, redacted, for the operator: people are shown only a safe summary.
upstream_log = logging.getLogger("broker.cloud")

CONSOLE_MICROVERSION = "2.6"
# remote-consoles bodies by console type, and the legacy server actions below 2.6 that mint the same.
CONSOLE_BODIES = {
    "novnc": {"remote_console": {"type": "novnc", "protocol": "vnc"}},
    "serial": {"remote_console": {"type": "serial", "protocol": "serial"}},
}
LEGACY_CONSOLE_ACTIONS = {
    "novnc": {"os-getVNCConsole": {"type": "novnc"}},
    "serial": {"os-getSerialConsole": {"type": "serial"}},
}
# Where each type's URL leads: noVNC's page (http) or nova-serialproxy's websocket (ws).
CONSOLE_SCHEMES = {"novnc": ("http", "https"), "serial": ("ws", "wss")}
MAX_PAGES = 200
# The power actions the broker offers, as Nova's server action bodies.
ACTION_BODIES = {
    "start": {"os-start": None},
    "reboot-soft": {"reboot": {"type": "SOFT"}},
    "reboot-hard": {"reboot": {"type": "HARD"}},
}
ACTION_WORDS = {"start": "Starting", "reboot-soft": "Rebooting", "reboot-hard": "Hard rebooting"}
# Statuses that mean "not done, try later": repeating is safe for every call.
RETRY_STATUSES = frozenset({413, 429, 503})
# Server errors worth one more try only where the call has no effect (reads).
RETRY_GET_STATUSES = frozenset({500, 502, 504})
# Upstream text shown to a person is cut to this many characters; the log keeps more.
SHOWN_CHARS = 200
LOGGED_CHARS = 1000
# Statuses that are ordinary answers (no such server, not running), logged below WARNING.
ORDINARY_STATUSES = frozenset({404, 409})
# Answers about one server, not about the cloud: the cloud is fine when it gives them.
PER_SERVER_STATUSES = frozenset({400, 404, 409, 501})
PER_SERVER_ERRORS = (errors.ServerNotFound, errors.ServerNotReady, errors.ConsoleUnavailable)
# What each error status becomes; also the outcome recorded for the call's metrics.
STATUS_ERRORS: dict[int, type[errors.CloudError]] = {
    404: errors.ServerNotFound,
    409: errors.ServerNotReady,
    400: errors.ConsoleUnavailable,
    501: errors.ConsoleUnavailable,
    401: errors.CloudRefused,
    403: errors.CloudRefused,
    413: errors.CloudBusy,
    429: errors.CloudBusy,
    503: errors.CloudBusy,
}
# Each cloud has one breaker per kind of call: a failing console service must not stop the
# lists, nor failing lists the consoles. Reads by ID go with the lists: they are the same
# servers API (nova-api and its database), so when one fails the other most likely does too.
LISTS = "lists"
CONSOLES = "consoles"
URL = re.compile(r"https?://[^\s:/]+(?::\d+)?[^\s:]*")

# Greedy to the last "@" of the word: a password may hold "@" or "/" itself.
USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)\S*@")
QUERY_STRING = re.compile(r"(?<=\S)\?(?=\S)[^\s\"'<>]*")
SECRET_PAIR = re.compile(r"(?i)\b([\w-]*(?:token|passw|secret|api_?key|signature|credential)[\w-]*)=[^\s&;,]+")
# Nova's power_state numbers (nova/compute/power_state.py) and the names the panel shows.
POWER_STATES = {0: "NOSTATE", 1: "RUNNING", 3: "PAUSED", 4: "SHUTDOWN", 6: "CRASHED", 7: "SUSPENDED"}
# A fault message is the one clue to a broken server: keep more of it than of other upstream text.
FAULT_CHARS = 500
FAULT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,39}$")


def safe_text(text: str, limit: int = SHOWN_CHARS) -> str:
    """Upstream text cut to what may be shown or logged: no credentials in URLs, no query strings,
    no secret-looking ``key=value``, no control or format characters, at most ``limit`` characters."""
    text = "".join(" " if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") else ch for ch in str(text))
    text = USERINFO.sub(r"\1<redacted>@", text)
    text = QUERY_STRING.sub("?<redacted>", text)
    text = SECRET_PAIR.sub(r"\1=<redacted>", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"


def upstream_fault(response: requests.Response) -> tuple[str, str]:
    """Nova's ``{fault: {code, message}}`` or Keystone's ``{"error": {...}}``: the fault name and its message."""
    try:
        body = response.json()
    except ValueError:
        return "", ""
    if isinstance(body, dict):
        for name, value in body.items():
            if isinstance(value, dict) and isinstance(value.get("message"), str):
                return (name if FAULT_NAME.match(str(name)) else ""), value["message"]
    return "", ""


def retry_after(response: requests.Response) -> float | None:
    """Seconds to wait from ``Retry-After`` or Nova's ``retryAfter``."""
    raw = response.headers.get("Retry-After")
    if raw is None:
        try:
            body = response.json()
            raw = next(v.get("retryAfter") for v in body.values() if isinstance(v, dict))
        except (ValueError, StopIteration, AttributeError):
            return None
    try:
        return max(0.0, float(raw))
    except (TypeError, ValueError):
        return None


def error_for(response: requests.Response, what: str, cloud: str) -> errors.CloudError:
    """Map an error status to the client's error types with a message that is safe to show.

    A 4xx message says what the person can act on (not running, no such server), so its
    (redacted, shortened) text is kept; a 5xx body is the cloud's own trouble and may carry
    internals (a database URL, a trace), so people see only its status and fault name. The
    operator finds the redacted text in the log either way.
    """
    status = response.status_code
    fault, text = upstream_fault(response)
    level = logging.INFO if status in ORDINARY_STATUSES else logging.WARNING
    upstream_log.log(level, "cloud %s: %s: HTTP %s %s: %s", cloud, what, status, fault, safe_text(text, LOGGED_CHARS))
    if status >= 500 or not text.strip():
        shown = f"cloud {cloud} answered HTTP {status}" + (f" ({fault})." if fault else ".")
    else:
        shown = safe_text(text)
    kind = STATUS_ERRORS.get(status, errors.CloudError)
    return kind(f"{what}: {shown}", upstream_status=status, retry_after=retry_after(response))


def check_console_url(url: object, kind: str = "novnc") -> str:
    """Refuse anything but an absolute URL with a host in the scheme of its console type: http(s) for a
    graphical console, ws(s) for a serial one."""
    if not isinstance(url, str) or len(url) > 4096:
        raise errors.CloudBadResponse("The cloud returned no usable console URL.")
    parts = urlsplit(url)
    schemes = CONSOLE_SCHEMES[kind]
    if parts.scheme not in schemes or not parts.hostname:
        raise errors.CloudBadResponse(
            f"The cloud returned a console URL that is not {schemes[0]}({schemes[1][-1]}); it was refused."
        )
    return url


def server_from_nova(body: object, cloud: str) -> ServerInfo:
    """Validate one Nova server resource and keep what the broker shows."""
    if not isinstance(body, dict) or not isinstance(body.get("id"), str):
        raise errors.CloudBadResponse("The cloud returned a server without an ID.")
    addresses = []
    for network in (body.get("addresses") or {}).values():
        for entry in network if isinstance(network, list) else []:
            if isinstance(entry, dict) and isinstance(entry.get("addr"), str):
                addresses.append(entry["addr"])
    metadata = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    return ServerInfo(
        id=body["id"],
        name=str(body.get("name") or ""),
        status=str(body.get("status") or "UNKNOWN"),
        cloud=cloud,
        addresses=tuple(addresses),
        az=str(body.get("OS-EXT-AZ:availability_zone") or ""),
        metadata={str(k): str(v) for k, v in metadata.items()},
        details=details_from_nova(body),
    )


def field_text(value: object, limit: int = 80) -> str:
    """A short upstream string field, or "" when the cloud sent something else."""
    return safe_text(value, limit) if isinstance(value, str | int) and not isinstance(value, bool) else ""


def details_from_nova(body: dict) -> Details:
    """The panel's fields from a Nova server resource; what is missing or malformed stays empty."""
    flavor = body.get("flavor") if isinstance(body.get("flavor"), dict) else {}
    image = body.get("image") if isinstance(body.get("image"), dict) else {}
    fault = body.get("fault") if isinstance(body.get("fault"), dict) else {}
    code = fault.get("code")
    return Details(
        task_state=field_text(body.get("OS-EXT-STS:task_state")),
        vm_state=field_text(body.get("OS-EXT-STS:vm_state")),
        power_state=POWER_STATES.get(body.get("OS-EXT-STS:power_state"), ""),
        fault_code=code if isinstance(code, int) and not isinstance(code, bool) else None,
        fault_message=field_text(fault.get("message"), FAULT_CHARS),
        # From microversion 2.47 the flavor is embedded by name; below it, named by ID.
        flavor=field_text(flavor.get("original_name") or flavor.get("id")),
        image=field_text(image.get("id")),
        created=field_text(body.get("created"), 40),
        updated=field_text(body.get("updated"), 40),
    )


def owned(body: object, project: str) -> bool:
    """True when a server resource says it belongs to ``project`` (Nova's ``tenant_id``)."""
    return isinstance(body, dict) and body.get("tenant_id") == project


def next_marker(body: dict, page: list) -> str | None:
    """The marker for the next page, from ``servers_links`` rel ``next``."""
    for link in body.get("servers_links") or []:
        if isinstance(link, dict) and link.get("rel") == "next":
            marker = parse_qs(urlsplit(str(link.get("href", ""))).query).get("marker")
            return marker[0] if marker else (page[-1].get("id") if page else None)
    return None


def failed_url(exc: Exception, fallback: str) -> str:
    """The URL a transport error names (its query string cut), else ``fallback``."""
    found = URL.search(str(exc))
    return safe_text(found.group(0), 300) if found else (fallback or "the cloud")


def contained(what: str) -> Callable[[Callable], Callable]:
    """Whatever fails inside the decorated call becomes this cloud's CloudError, its detail logged.

    A broken clouds.yaml entry makes keystoneauth1 raise a bare ``Exception``; a library
    bug may raise anything. Either must stay that one cloud's trouble, never a 500 for
    every page.
    """

    def decorate(method: Callable) -> Callable:
        @functools.wraps(method)
        def call(self: ComputeClient, *args, **kwargs):
            try:
                return method(self, *args, **kwargs)
            except errors.CloudError as exc:
                self.note_failure(exc)
                raise
            except Exception as exc:
                error = self.unexpected(what, exc)
                self.note_failure(error)
                raise error from None

        return call

    return decorate


class ComputeClient:
    """Nova's servers and remote-consoles for one cloud (one region, one project)."""

    def __init__(
        self,
        name: str,
        session: ks_session.Session,
        *,
        region_name: str | None = None,
        interface: str | None = None,
        endpoint_override: str | None = None,
        timeouts: Timeouts | None = None,
        page_size: int = 1000,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        console_breaker: CircuitBreaker | None = None,
        max_in_flight: int = 80,
    ) -> None:
        self.name = name
        self.timeouts = timeouts or Timeouts()
        self.page_size = page_size
        self.adapter = ks_adapter.Adapter(
            session,
            service_type="compute",
            interface=interface or "public",
            region_name=region_name,
            endpoint_override=endpoint_override,
            connect_retries=0,
        )
        self.region_name = region_name
        self.retry = retry or RetryPolicy()
        self.breakers = {LISTS: breaker or CircuitBreaker(), CONSOLES: console_breaker or CircuitBreaker()}
        for circuit, watched in self.breakers.items():
            watched.listener = functools.partial(metrics.circuit, name, circuit)
            metrics.circuit(name, circuit, watched.is_open)
        self.bulkhead = Bulkhead(max_in_flight)
        self._max_version: tuple[int, int] | None = None
        self._version_lock = threading.Lock()
        self.auth_url = str(getattr(session.auth, "auth_url", "") or "")
        self.health = Health(name, describe_identity(session.auth, region_name))

    @property
    def breaker(self) -> CircuitBreaker:
        """The lists' breaker (lists and reads by ID); ``breakers`` holds the consoles' one too."""
        return self.breakers[LISTS]

    def api_urls(self) -> list[str]:
        """URLs known without a network call: the identity endpoint and any compute override."""
        urls = [getattr(self.adapter.session.auth, "auth_url", None), self.adapter.endpoint_override]
        return [url for url in urls if isinstance(url, str)]

    def note_failure(self, exc: errors.CloudError) -> None:
        """A call's failure, if it says something about the cloud (not one server's state, not our own pause)."""
        if not isinstance(exc, PER_SERVER_ERRORS + (errors.CircuitOpen, errors.CloudBusyHere)):
            self.health.failed(exc.message, exc.upstream_status)

    def unexpected(self, what: str, exc: Exception) -> errors.CloudError:
        """A failure without a type of ours: the (redacted) detail to the log, a plain message to people."""
        detail = safe_text(str(exc), LOGGED_CHARS)
        upstream_log.warning("cloud %s: %s failed: %s: %s", self.name, what, type(exc).__name__, detail)
        log.debug("cloud %s: %s failed", self.name, what, exc_info=exc)
        return errors.CloudError(
            f"{what}: cloud {self.name} failed in the broker ({type(exc).__name__}); the broker's log has the detail."
        )

    @contextmanager
    def _translated(self, what: str) -> Iterator[None]:
        """Turn keystoneauth1's transport and auth failures into CloudErrors that say what to fix."""
        here = f"{what}: cloud {self.name}"
        try:
            yield
        except ks_exc.ConnectTimeout as exc:
            limits = f"{self.timeouts.connect:g} s to connect, {self.timeouts.read:g} s to answer"
            raise errors.CloudTimeout(
                f"{here}: {failed_url(exc, self.auth_url)} did not answer in time ({limits})."
            ) from None
        except ks_exc.SSLError as exc:
            raise errors.CloudUnreachable(
                f"{here}: the TLS handshake with {failed_url(exc, self.auth_url)} failed (certificate or CA file?)."
            ) from None
        except (ks_exc.ConnectFailure, ks_exc.UnknownConnectionError) as exc:
            raise errors.CloudUnreachable(
                f"{here}: cannot connect to {failed_url(exc, self.auth_url)} (refused, reset or no route)."
            ) from None
        except ks_exc.Unauthorized:
            raise errors.CloudRefused(
                f"{here}: the credentials (or their project scope) were refused by {self.auth_url or 'Keystone'}; "
                "check the auth section of its clouds.yaml entry."
            ) from None
        except (ks_exc.EndpointNotFound, ks_exc.EmptyCatalog):
            raise errors.CloudError(f"{here}: {self.missing_endpoint()}") from None
        except ks_exc.HttpError as exc:
            # Keystone itself failed (an error status on the token request).
            raise errors.CloudUnreachable(
                f"{here}: the identity service at {self.auth_url or '?'} answered HTTP {exc.http_status}."
            ) from None
        except ks_exc.DiscoveryFailure:
            raise errors.CloudUnreachable(
                f"{here}: no identity service answered at {self.auth_url or '?'} (check auth_url)."
            ) from None
        except ks_exc.ClientException as exc:
            raise errors.CloudError(f"{here}: {type(exc).__name__}.") from None

    def missing_endpoint(self) -> str:
        """Which regions the catalog offers compute in, when the configured one has none."""
        region = self.region_name or "(none set)"
        try:
            access = self.adapter.session.auth.get_access(self.adapter.session)
            endpoints = access.service_catalog.get_endpoints(service_type="compute").get("compute", [])
        except Exception:  # the catalog itself is out of reach: say what we know
            endpoints = []
        regions = sorted({str(e.get("region_id") or e.get("region")) for e in endpoints if isinstance(e, dict)})
        if regions:
            return (
                f"its catalog has no compute endpoint in region {region}; it has compute in: {', '.join(regions)}. "
                "Set region_name in its clouds.yaml entry to one of those."
            )
        return (
            "its catalog has no compute endpoint at all; give its compute URL as compute_endpoint_override "
            "in its clouds.yaml entry (Huawei Cloud ECS: https://ecs.<region>.myhuaweicloud.com/v2.1/<project_id>)."
        )

    def _request(
        self, method: str, path: str, what: str, *, operation: str, circuit: str = LISTS, **kwargs
    ) -> requests.Response:
        """One call, retried while safe and worth it, behind the bulkhead and the breaker of ``circuit``."""
        kwargs.setdefault("timeout", self.timeouts.as_requests())
        breaker = self.breakers[circuit]
        with self.bulkhead:
            breaker.before(self.name, what)
            try:
                response = self._with_retries(method, path, what, operation, **kwargs)
            except BaseException as exc:
                # Every way out reports to the breaker, or a half-open probe would never end.
                breaker.failed(exc.message if isinstance(exc, errors.CloudError) else type(exc).__name__)
                raise
            status = response.status_code
            if status >= 500 or status in RETRY_STATUSES:
                breaker.failed(f"{what}: HTTP {status}")
            else:
                breaker.succeeded()
            if status < 400 or status in PER_SERVER_STATUSES:
                self.health.succeeded()
            return response

    def _attempt(self, method: str, path: str, what: str, operation: str, **kwargs) -> requests.Response:
        """One HTTP call, recorded in the metrics with its time and outcome ("ok" or the error's class)."""
        began = time.monotonic()
        outcome = "ok"
        try:
            with self._translated(what):
                response = self.adapter.request(path, method, raise_exc=False, **kwargs)
            if response.status_code >= 400:
                outcome = STATUS_ERRORS.get(response.status_code, errors.CloudError).__name__
            return response
        except BaseException as exc:
            outcome = type(exc).__name__
            raise
        finally:
            metrics.upstream(self.name, operation, outcome, time.monotonic() - began)

    def _with_retries(self, method: str, path: str, what: str, operation: str, **kwargs) -> requests.Response:
        for attempt in itertools.count(1):
            try:
                response = self._attempt(method, path, what, operation, **kwargs)
            except errors.CloudUnreachable:
                # Nothing was answered (refused, reset, Keystone failing): repeating is safe.
                delay = self.retry.delay(attempt)
                if delay is None:
                    raise
                time.sleep(delay)
                continue
            status = response.status_code
            if status in RETRY_STATUSES or (method == "GET" and status in RETRY_GET_STATUSES):
                delay = self.retry.delay(attempt, retry_after(response))
                if delay is not None:
                    time.sleep(delay)
                    continue
            return response
        raise AssertionError("itertools.count never ends")

    def _json(self, response: requests.Response, what: str) -> dict:
        if response.status_code >= 400:
            raise error_for(response, what, self.name)
        try:
            body = response.json()
        except ValueError:
            raise errors.CloudBadResponse(f"{what}: cloud {self.name} answered with malformed JSON.") from None
        if not isinstance(body, dict):
            raise errors.CloudBadResponse(f"{what}: cloud {self.name} answered with unexpected JSON.")
        return body

    # -- checks -----------------------------------------------------------------

    def probe(self) -> list[Finding]:
        """Sign in, find the compute endpoint and its versions, list one server; mint nothing.

        Stops at the first failure: the later steps depend on it.
        """
        findings: list[Finding] = []
        steps = (
            ("Signing in", self._probe_token),
            ("Finding the compute endpoint", self._probe_endpoint),
            ("Reading the API version", self._probe_version),
            ("Listing one server", self._probe_list),
        )
        for what, step in steps:
            try:
                with self._translated(what):
                    text = step()
            except errors.CloudError as exc:
                self.note_failure(exc)
                return [*findings, Finding("fail", exc.message)]
            except Exception as exc:
                return [*findings, Finding("fail", self.unexpected(what, exc).message)]
            findings.append(Finding("ok", f"cloud {self.name}: {text}"))
        return findings

    def _probe_token(self) -> str:
        self.adapter.session.get_token()
        return f"signed in ({self.health.identity})"

    def _probe_endpoint(self) -> str:
        return f"compute endpoint {self.adapter.get_endpoint()}"

    def _probe_version(self) -> str:
        major, minor = self.max_version()
        if (major, minor) < (2, 6):
            return f"compute API up to {major}.{minor}: consoles through the legacy os-getVNCConsole action"
        return f"compute API up to {major}.{minor}: consoles through remote-consoles at {CONSOLE_MICROVERSION}"

    def _probe_list(self) -> str:
        response = self._request(
            "GET", "/servers/detail", "Listing one server", operation="list_servers", params={"limit": 1}
        )
        page = self._json(response, "Listing one server").get("servers")
        if not isinstance(page, list):
            raise errors.CloudBadResponse(f"Listing one server: cloud {self.name} sent no server list.")
        first = (
            f"first: {safe_text(page[0].get('name', '?'), 80)}" if page and isinstance(page[0], dict) else "none yet"
        )
        return f"lists servers ({first})"

    # -- versions ---------------------------------------------------------------

    @contained("Reading the API version")
    def max_version(self) -> tuple[int, int]:
        """The cloud's highest compute microversion, read once from its version document through keystoneauth1.

        Asked before every mint, so the answer is kept once known (a cloud's versions change only with
        an upgrade, and the broker asks for 2.6 at most): a mint then costs no discovery work at all.
        Until it is known, one caller at a time reads it (bounded by the session's timeout), so the
        first mints of a storm make one discovery call and share its answer instead of racing.
        """
        known = self._max_version
        if known is not None:
            return known
        with self._version_lock:
            if self._max_version is None:
                self._max_version = self._read_max_version()
            return self._max_version

    def _read_max_version(self) -> tuple[int, int]:
        began = time.monotonic()
        outcome = "ok"
        try:
            with self._translated("Reading the API version"):
                found = self.adapter.get_endpoint_data()
            if found is None or not found.max_microversion:
                # keystoneauth1 falls back to the catalog's endpoint, with no versions, when the version
                # document could not be read: every Nova since the 2.1 API advertises microversions, so this
                # is an unreadable answer to try again, not a fact about the cloud to keep.
                raise errors.CloudUnreachable(
                    f"Reading the API version: cloud {self.name} did not say which microversions it supports "
                    "(its version document could not be read)."
                )
        except BaseException as exc:
            outcome = type(exc).__name__
            raise
        finally:
            metrics.upstream(self.name, "version", outcome, time.monotonic() - began)
        major, minor = found.max_microversion[:2]
        return int(major), int(minor)

    # -- servers ----------------------------------------------------------------

    def project_id(self) -> str:
        """The project the broker's session is scoped to (its token says; no extra call once signed in)."""
        with self._translated("Reading the broker's project"):
            project = self.adapter.get_project_id()
        if not project:
            raise errors.CloudError(f"cloud {self.name}: the broker's credentials are not scoped to a project.")
        return project

    @contained("Listing servers")
    def list_servers(self) -> list[ServerInfo]:
        """Every server in the project, following ``limit``/``marker`` pages."""
        servers: list[ServerInfo] = []
        marker: str | None = None
        foreign = 0
        for _ in range(MAX_PAGES):
            params = {"limit": self.page_size}
            if marker:
                params["marker"] = marker
            response = self._request(
                "GET", "/servers/detail", "Listing servers", operation="list_servers", params=params
            )
            body = self._json(response, "Listing servers")
            page = body.get("servers")
            if not isinstance(page, list):
                raise errors.CloudBadResponse(f"Listing servers: cloud {self.name} sent no server list.")
            # An admin-scoped account may be shown other projects' servers; they are not ours to open.
            mine = [item for item in page if owned(item, self.project_id())]
            foreign += len(page) - len(mine)
            servers.extend(server_from_nova(item, self.name) for item in mine)
            new_marker = next_marker(body, page)
            if not page or not new_marker or new_marker == marker:
                break
            marker = new_marker
        else:
            log.warning("cloud %s: stopped listing after %d pages", self.name, MAX_PAGES)
        if foreign:
            upstream_log.warning("cloud %s: left out %d listed servers of another project or none", self.name, foreign)
        return servers

    @contained("Looking up the server")
    def get_server(self, server_id: str) -> ServerInfo:
        """One server of the broker's project by ID (404, or another project's server -> ServerNotFound)."""
        what = "Looking up the server"
        response = self._request("GET", f"/servers/{server_id}", what, operation="get_server")
        body = self._json(response, what).get("server")
        if not owned(body, self.project_id()):
            upstream_log.info("cloud %s: server %s is not in the broker's project: not found", self.name, server_id)
            raise errors.ServerNotFound(f"{what}: no such server in cloud {self.name}.", upstream_status=404)
        return server_from_nova(body, self.name)

    # -- power ------------------------------------------------------------------

    @contained("Changing the server's power")
    def server_action(self, server_id: str, action: str) -> None:
        """Start or reboot a server (``start``, ``reboot-soft``, ``reboot-hard``); Nova answers 202 and acts later.

        A 409 (a task in progress, or a state that does not allow it) is ServerNotReady; a 403
        is ActionForbidden: the cloud's policy denies the broker's account this action, which
        says nothing about its credentials.
        """
        what = f"{ACTION_WORDS[action]} the server"
        # The servers API, like lists and reads by ID: its trouble is theirs, not the console proxy's.
        response = self._request(
            "POST", f"/servers/{server_id}/action", what, operation="server_action", json=ACTION_BODIES[action]
        )
        if response.status_code == 403:
            error = error_for(response, what, self.name)
            raise errors.ActionForbidden(error.message, upstream_status=403) from None
        if response.status_code >= 400:
            raise error_for(response, what, self.name)

    # -- consoles ---------------------------------------------------------------

    @contained("Opening the console")
    def create_console(self, server_id: str, kind: str = "novnc") -> Console:
        """Mint a console URL of ``kind`` (novnc or serial): remote-consoles at 2.6, or the legacy action below it."""
        if self.max_version() < (2, 6):
            return self._legacy_console(server_id, kind)
        response = self._request(
            "POST",
            f"/servers/{server_id}/remote-consoles",
            "Opening the console",
            operation="create_console",
            circuit=CONSOLES,
            json=CONSOLE_BODIES[kind],
            microversion=CONSOLE_MICROVERSION,
        )
        body = self._json(response, "Opening the console").get("remote_console")
        return self._console_from(body, kind)

    def _legacy_console(self, server_id: str, kind: str) -> Console:
        response = self._request(
            "POST",
            f"/servers/{server_id}/action",
            "Opening the console",
            operation="create_console",
            circuit=CONSOLES,
            json=LEGACY_CONSOLE_ACTIONS[kind],
        )
        return self._console_from(self._json(response, "Opening the console").get("console"), kind)

    def _console_from(self, body: object, kind: str) -> Console:
        if not isinstance(body, dict):
            raise errors.CloudBadResponse(f"Opening the console: cloud {self.name} sent no console.")
        wanted = CONSOLE_BODIES[kind]["remote_console"]
        return Console(
            url=check_console_url(body.get("url"), kind),
            type=str(body.get("type") or wanted["type"]),
            protocol=str(body.get("protocol") or wanted["protocol"]),
        )
