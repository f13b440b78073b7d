"""The LDAP directory client: search-then-bind with a service account, over TLS, with short timeouts.

Flask-free, like the cloud client: it takes its settings in the constructor and raises its
own error. A sign-in binds as the service account, finds exactly one entry for the typed
name (escaped into the filter, so ``*)(uid=*`` is a name, not a filter), binds as that
entry with the typed password on a connection of its own, and reads the entry's groups
back as the service account. Neither password is ever logged or kept.
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from contextlib import suppress
from dataclasses import dataclass
from urllib.parse import urlsplit

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.protocol.sasl.sasl import validate_simple_password
from ldap3.utils.conv import escape_filter_chars

from broker.config import LdapSettings

log = logging.getLogger(__name__)

# Seconds (whole: ldap3 packs them into a socket option) to connect and to wait for each answer: a sign-in
# never hangs on a directory that is down, and local accounts go on working.
TIMEOUT = 5
# Longest name searched for; the login form allows no more.
MAX_NAME = 64
# Most groups read for one user.
MAX_GROUPS = 1000
# What a directory that cannot answer raises (ssl.SSLError is an OSError).
FAILURES = (LDAPException, OSError)


class DirectoryUnreachable(Exception):
    """The directory could not answer (down, TLS refused, service account refused); names the URL, never a password."""


@dataclass(frozen=True)
class DirectoryUser:
    """Who the directory says signed in: the entry's DN, its own spelling of the name, and its groups' ``cn``s."""

    dn: str
    username: str
    groups: tuple[str, ...] = ()


def acceptable_name(name: str) -> bool:
    """False for names no search should see: empty, too long, or with control characters."""
    return 0 < len(name) <= MAX_NAME and not any(ord(c) < 32 or ord(c) == 127 for c in name)


def sendable_password(password: str) -> bool:
    """False for passwords no simple bind can carry: empty, or refused by SASLprep (control characters...).

    ldap3 prepares a password (RFC 4013) only as it binds, and its refusal would look like a
    directory that cannot answer; such a password is simply not anyone's.
    """
    try:
        validate_simple_password(password)
    except LDAPException:
        return False
    return True


def name_attribute(user_filter: str) -> str | None:
    """The attribute the user filter matches the name against (``uid`` in ``(uid={username})``)."""
    found = re.search(r"\(([A-Za-z][A-Za-z0-9-]*)=\{username\}\)", user_filter)
    return found.group(1) if found else None


class Directory:
    """One LDAP directory, asked once per sign-in; safe to share between threads (no connection is kept)."""

    def __init__(self, settings: LdapSettings, timeout: int = TIMEOUT):
        self.settings = settings
        self.timeout = timeout
        parts = urlsplit(settings.url)
        self.secure = parts.scheme == "ldaps"
        self.host = parts.hostname or ""
        self.port = parts.port or (636 if self.secure else 389)
        self.attribute = name_attribute(settings.user_filter)
        if not settings.verify:
            log.warning(
                "BROKER_LDAP_VERIFY=false: the certificate of %s is NOT checked; anyone on the path can read "
                "every password typed into the sign-in form",
                settings.url,
            )

    def authenticate(self, name: str, password: str) -> DirectoryUser | None:
        """The user when ``password`` is theirs; None for a wrong password or no such (single) user."""
        if not acceptable_name(name) or not sendable_password(password):
            # An empty password would make a simple bind "unauthenticated" and succeed.
            return None
        with self.connection(self.settings.bind_dn or None, self.settings.bind_password or None) as service:
            if not self.bind(service, "the service account's bind"):
                raise DirectoryUnreachable(
                    f"{self.settings.url}: the service account's bind was refused (BROKER_LDAP_BIND_DN/PASSWORD)"
                )
            dn, username = self.find(service, name)
            if dn is None:
                return None
            with self.connection(dn, password) as theirs:
                if not self.bind(theirs, "the user's bind"):
                    return None
            groups = self.groups(service, dn, username)
        return DirectoryUser(dn=dn, username=username, groups=groups)

    # -- connections ------------------------------------------------------------

    def tls(self) -> ldap3.Tls:
        validate = ssl.CERT_REQUIRED if self.settings.verify else ssl.CERT_NONE
        return ldap3.Tls(validate=validate, ca_certs_file=self.settings.ca_file)

    @contextmanager
    def connection(self, user: str | None, password: str | None) -> Iterator[ldap3.Connection]:
        """An open connection (TLS up: ldaps:// or StartTLS), not yet bound; closed on the way out."""
        server = ldap3.Server(
            self.host,
            port=self.port,
            use_ssl=self.secure,
            tls=self.tls(),
            get_info=ldap3.NONE,
            connect_timeout=self.timeout,
        )
        connection = ldap3.Connection(
            server,
            user=user,
            password=password,
            auto_bind=ldap3.AUTO_BIND_NONE,
            read_only=True,
            auto_referrals=False,  # never follow a referral to another host with a password
            receive_timeout=self.timeout,
            raise_exceptions=False,
        )
        try:
            try:
                connection.open()
                if self.settings.start_tls and not self.secure and not connection.start_tls():
                    raise DirectoryUnreachable(f"{self.settings.url}: StartTLS refused: {connection.result}")
            except FAILURES as exc:
                raise self.unreachable("cannot connect", exc) from None
            yield connection
        finally:
            with suppress(*FAILURES):
                connection.unbind()

    def unreachable(self, what: str, exc: Exception) -> DirectoryUnreachable:
        # ldap3's messages name hosts and certificates, never the credentials.
        return DirectoryUnreachable(f"{self.settings.url}: {what}: {type(exc).__name__}: {exc}"[:400])

    def bind(self, connection: ldap3.Connection, what: str) -> bool:
        """Bind; wrong credentials are False, anything else (lost connection, TLS required...) DirectoryUnreachable."""
        try:
            if connection.bind():
                return True
        except FAILURES as exc:
            raise self.unreachable(what, exc) from None
        result = (connection.result or {}).get("result")
        if result != 49:  # invalidCredentials
            description = (connection.result or {}).get("description") or "no answer"
            raise DirectoryUnreachable(f"{self.settings.url}: {what} failed: {description}")
        return False

    # -- searches ---------------------------------------------------------------

    def search(self, connection: ldap3.Connection, base: str, query: str, attributes: list[str], limit: int):
        """The entries found (``searchResEntry`` only); DirectoryUnreachable when the search itself fails."""
        try:
            connection.search(
                base,
                query,
                search_scope=ldap3.SUBTREE,
                attributes=attributes,
                size_limit=limit,
                time_limit=int(self.timeout),
            )
        except FAILURES as exc:
            raise self.unreachable(f"search of {base}", exc) from None
        result = connection.result.get("result")
        if result not in (0, 4):  # success, sizeLimitExceeded (a wrong base is noSuchObject: a configuration error)
            raise DirectoryUnreachable(
                f"{self.settings.url}: search of {base} failed: {connection.result.get('description')}"
            )
        return [entry for entry in connection.response or () if entry.get("type") == "searchResEntry"]

    def find(self, connection: ldap3.Connection, name: str) -> tuple[str | None, str]:
        """The DN of the one entry for ``name`` and the name as the directory spells it; (None, name) otherwise."""
        query = self.settings.user_filter.replace("{username}", escape_filter_chars(name))
        attributes = [self.attribute] if self.attribute else []
        entries = self.search(connection, self.settings.user_base, query, attributes, limit=2)
        if len(entries) != 1:
            if len(entries) > 1:
                log.warning(
                    "LDAP: more than one entry under %s matches a sign-in name; refused", self.settings.user_base
                )
            return None, name
        entry = entries[0]
        return entry["dn"], self.stored_name(entry, name)

    def stored_name(self, entry: dict, typed: str) -> str:
        values = (entry.get("attributes") or {}).get(self.attribute, []) if self.attribute else []
        values = [values] if isinstance(values, str) else list(values)
        # uid may hold several values: the one typed (in the directory's spelling), else the first.
        same = [value for value in values if value.lower() == typed.lower()]
        return (same or values or [typed])[0]

    def groups(self, connection: ldap3.Connection, dn: str, username: str) -> tuple[str, ...]:
        if not self.settings.group_base:
            return ()
        query = self.settings.group_filter.replace("{dn}", escape_filter_chars(dn))
        query = query.replace("{username}", escape_filter_chars(username))
        entries = self.search(connection, self.settings.group_base, query, ["cn"], limit=MAX_GROUPS)
        names = set()
        for entry in entries:
            cn = (entry.get("attributes") or {}).get("cn") or []
            names.update([cn] if isinstance(cn, str) else cn[:1])
        return tuple(sorted(names))
