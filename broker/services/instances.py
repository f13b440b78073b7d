"""Instances: every web and relay process records its version and a fingerprint of its settings in the
database, so that processes that disagree are refused at start (the secret key) or flagged by ``check`` and
/admin/instances (clouds, console mode, version).

Two instances with different secret keys refuse each other's cookies and forms: every sign-in through
both fails with "The form was stale or forged". A new key is rolled out with the old one in
BROKER_SECRET_KEY_FALLBACKS, which Flask and the CSRF tokens still accept, so those two may run together.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import socket
import subprocess
import tomllib
from collections import Counter
from collections.abc import Callable
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit
from urllib.parse import urlunsplit

from sqlalchemy import delete
from sqlalchemy import select
from sqlalchemy import update

from broker.cloud.health import Finding
from broker.cloud.registry import Cloud
from broker.config import Settings
from broker.extensions import db
from broker.models import Instance
from broker.services.clock import aware
from broker.services.clock import now

log = logging.getLogger(__name__)

# Each process touches its row this often; a row seen within RUNNING_WITHIN (three beats) is a running
# process, so one that died without removing its row stops counting a minute and a half later.
HEARTBEAT = 30
RUNNING_WITHIN = 90
# Rows of processes gone this long are deleted at the next start.
FORGET_AFTER = 24 * 3600
ROLES = ("web", "relay")
# The key's fingerprint is scrypt with this fixed salt: the same key gives the same fingerprint on every
# host, and one guess at a weak key costs 16 MiB and some 50 ms, so the table gives no key away.
FINGERPRINT_SALT = b"console-broker: fingerprint of BROKER_SECRET_KEY, v1"
SCRYPT_COST = {"n": 2**14, "r": 8, "p": 1, "dklen": 16}
ROOT = Path(__file__).resolve().parents[2]


@functools.lru_cache(maxsize=32)
def fingerprint(key: str) -> str:
    """32 hex digits that name ``key`` without revealing it (see FINGERPRINT_SALT)."""
    return hashlib.scrypt(key.encode(), salt=FINGERPRINT_SALT, **SCRYPT_COST).hex()


@functools.lru_cache(maxsize=1)
def version() -> str:
    """pyproject's version, with the git commit when the code is a checkout: ``0.1.0+3fa2b1c9d0e1``."""
    try:
        number = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        number = "unknown"
    commit = git_commit()
    return f"{number}+{commit}" if commit else number


def git_commit() -> str | None:
    """The checkout's commit, or None (no git, not a checkout, a checkout of another user)."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and re.fullmatch(r"[0-9a-f]{7,40}", commit) else None


def public_url(url: str) -> str:
    """``url`` without what may be secret in it (user and password, query, fragment)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def describe_clouds(clouds: Iterable[Cloud]) -> str:
    """Each cloud's name, API endpoints and region, by name: ``lab https://keystone.lab/v3 RegionOne; prod ...``."""
    described = []
    for cloud in sorted(clouds, key=lambda cloud: cloud.name):
        urls = [public_url(url) for url in cloud.client.api_urls()]
        region = [cloud.client.region_name] if cloud.client.region_name else []
        described.append(" ".join([cloud.name, *urls, *region]))
    return "; ".join(described)


def describe_modes(clouds: Iterable[Cloud], default: str) -> str:
    """How consoles open: one mode for all the clouds (``relay``), else each cloud's (``lab: relay, prod: iframe``)."""
    modes = {cloud.name: cloud.console_mode for cloud in clouds}
    if len(set(modes.values())) <= 1:
        return next(iter(modes.values()), default)
    return ", ".join(f"{name}: {mode}" for name, mode in sorted(modes.items()))


@dataclass(frozen=True)
class Profile:
    """What a process runs with, as the table keeps it: fingerprints of its keys, never a key."""

    version: str
    key: str
    fallbacks: tuple[str, ...] = ()
    clouds: str = ""
    console_mode: str = ""

    def accepts(self, other: Profile) -> bool:
        """True when this process accepts the cookies and forms ``other`` signs."""
        return other.key == self.key or other.key in self.fallbacks


def compatible(one: Profile, other: Profile) -> bool:
    """The same key, or a rotation under way: one accepts what the other signs (the new key with the old
    one as fallback, beside instances still on the old key)."""
    return one.accepts(other) or other.accepts(one)


def profile(settings: Settings, clouds: Iterable[Cloud]) -> Profile:
    """This process's profile, from its settings and clouds."""
    clouds = list(clouds)
    return Profile(
        version=version(),
        key=fingerprint(settings.secret_key),
        fallbacks=tuple(fingerprint(key) for key in settings.secret_key_fallbacks),
        clouds=describe_clouds(clouds),
        console_mode=describe_modes(clouds, settings.console_mode),
    )


def profile_of(row: Instance) -> Profile:
    fallbacks = tuple(item for item in row.fallback_fingerprints.split(",") if item)
    return Profile(row.version, row.key_fingerprint, fallbacks, row.clouds, row.console_mode)


# -- the table ------------------------------------------------------------------------------------


def running(moment: datetime | None = None) -> list[Instance]:
    """The processes seen within RUNNING_WITHIN, oldest first."""
    fresh = (moment or now()) - timedelta(seconds=RUNNING_WITHIN)
    query = select(Instance).where(Instance.seen_at >= fresh).order_by(Instance.started_at, Instance.id)
    return list(db.session.scalars(query))


def register(me: Profile, role: str, name: str | None = None) -> int:
    """Stage this process's row (and drop those of processes long gone); its id. The caller commits."""
    db.session.execute(delete(Instance).where(Instance.seen_at < now() - timedelta(seconds=FORGET_AFTER)))
    row = Instance(
        name=name or f"{socket.gethostname()}:{os.getpid()}",
        role=role,
        version=me.version,
        key_fingerprint=me.key,
        fallback_fingerprints=",".join(me.fallbacks),
        clouds=me.clouds,
        console_mode=me.console_mode,
    )
    db.session.add(row)
    db.session.flush()
    return row.id


def touch(row_id: int) -> bool:
    """Mark the row seen now; False when it is gone. The caller commits."""
    done = db.session.execute(update(Instance).where(Instance.id == row_id).values(seen_at=now()))
    return bool(done.rowcount)


def forget(row_id: int) -> None:
    """Remove the row of a process that is stopping. The caller commits."""
    db.session.execute(delete(Instance).where(Instance.id == row_id))


# -- who disagrees ------------------------------------------------------------------------------


def label(row: Instance, moment: datetime | None = None) -> str:
    seen = int(((moment or now()) - aware(row.seen_at)).total_seconds())
    return f"{row.name} {row.role}, seen {max(seen, 0)} s ago"


def names(rows: list[Instance], most: int = 4) -> str:
    """``host:pid role`` of the first few rows, and how many more."""
    named = ", ".join(f"{row.name} {row.role}" for row in rows[:most])
    return f"{named} and {len(rows) - most} more" if len(rows) > most else named


def key_conflict(me: Profile, rows: list[Instance]) -> str | None:
    """Why this process must not start beside ``rows`` (running processes whose key neither accepts the
    other's), naming the setting; None when it may."""
    refusing = [row for row in rows if not compatible(me, profile_of(row))]
    if not refusing:
        return None
    seen = "; ".join(label(row) for row in refusing[:4]) + (f"; {len(refusing) - 4} more" if len(refusing) > 4 else "")
    return (
        f"BROKER_SECRET_KEY is not the key of the instances running on this database ({seen}), and neither "
        "side has the other's in BROKER_SECRET_KEY_FALLBACKS: each would refuse the other's sign-ins and forms "
        "('The form was stale or forged'). Give this instance their BROKER_SECRET_KEY; to change the key, set "
        "the new one with the old one in BROKER_SECRET_KEY_FALLBACKS and restart the instances one at a time. "
        f"(A process that stopped without saying so counts as running for {RUNNING_WITHIN} s after it was seen.)"
    )


def groups(rows: list[Instance], value: Callable[[Instance], str]) -> dict[str, list[Instance]]:
    """Rows by ``value(row)``, the values in the order they first appear."""
    found: dict[str, list[Instance]] = {}
    for row in rows:
        found.setdefault(value(row), []).append(row)
    return found


def key_findings(rows: list[Instance]) -> list[Finding]:
    """A FAIL for each two keys that neither accepts; a note for a rotation only half way (one accepts)."""
    keys = groups(rows, lambda row: row.key_fingerprint)
    findings = []
    pairs = [(a, b) for i, a in enumerate(keys) for b in list(keys)[i + 1 :]]
    for one, other in pairs:
        first, second = profile_of(keys[one][0]), profile_of(keys[other][0])
        if not compatible(first, second):
            findings.append(
                Finding(
                    "fail",
                    f"BROKER_SECRET_KEY differs between running instances: {names(keys[one])} sign with key "
                    f"{one[:8]}, {names(keys[other])} with key {other[:8]}, and neither accepts the other's: "
                    "people whose requests reach both get 'The form was stale or forged'. Give every instance the "
                    "same BROKER_SECRET_KEY (while changing it, the old one in BROKER_SECRET_KEY_FALLBACKS)",
                )
            )
        elif not (first.accepts(second) and second.accepts(first)):
            new, old = (one, other) if first.accepts(second) else (other, one)
            findings.append(
                Finding(
                    "note",
                    f"BROKER_SECRET_KEY is being changed: {names(keys[new])} (key {new[:8]}) accept what "
                    f"{names(keys[old])} (key {old[:8]}) sign, but not the reverse, so a person signed in through "
                    f"the first and sent to the second must sign in again: restart those on key {old[:8]} with "
                    "the new key",
                )
            )
    return findings


# The settings that must be the same on every instance besides the key: (what, column, why, fix).
ALIKE = (
    (
        "clouds",
        "clouds",
        "a person's server list depends on the instance that answers",
        "give every instance the same BROKER_CLOUDS (or OS_CLOUD) and clouds.yaml",
    ),
    (
        "console mode",
        "console_mode",
        "a console page from one instance may ask another for what it does not give",
        "set the same BROKER_CONSOLE_MODE (and console_mode in clouds.yaml) on every instance",
    ),
)


def alike_findings(rows: list[Instance]) -> list[Finding]:
    """A FAIL for clouds or console mode that differ between running processes, saying who has what."""
    findings = []
    for what, column, why, fix in ALIKE:
        found = groups(rows, lambda row, column=column: getattr(row, column))
        if len(found) > 1:
            each = "; ".join(f"{names(found[value])}: {value or 'none'}" for value in found)
            findings.append(Finding("fail", f"running instances disagree on {what} ({each}): {why}; {fix}"))
    return findings


def version_findings(rows: list[Instance]) -> list[Finding]:
    found = groups(rows, lambda row: row.version)
    if len(found) < 2:
        return []
    each = "; ".join(f"{names(found[value])}: {value}" for value in found)
    return [Finding("note", f"versions differ between running instances ({each}): usual during a rolling update")]


def this_environment(me: Profile, rows: list[Instance]) -> list[Finding]:
    """How the environment ``check`` runs in compares with the running processes."""
    findings = []
    if conflict := [row for row in rows if not compatible(me, profile_of(row))]:
        findings.append(
            Finding(
                "fail",
                f"this environment's BROKER_SECRET_KEY (key {me.key[:8]}) is neither the key of the running instances "
                f"({names(conflict)}) nor accepted by them: an instance started with it refuses to start. Use their "
                "BROKER_SECRET_KEY, or put theirs in BROKER_SECRET_KEY_FALLBACKS",
            )
        )
    for what, column, _, _ in ALIKE:
        theirs = groups(rows, lambda row, column=column: getattr(row, column))
        ours = getattr(me, column)
        if ours not in theirs:
            each = "; ".join(f"{names(theirs[value])}: {value or 'none'}" for value in theirs)
            findings.append(
                Finding(
                    "note",
                    f"this environment's {what} ({ours or 'none'}) is not the running instances' ({each}): "
                    "instances restarted with it will differ from those not restarted",
                )
            )
    return findings


def findings(rows: list[Instance], me: Profile | None = None) -> list[Finding]:
    """What ``check`` and /admin/instances say of the running processes (and of ``me``, check's environment)."""
    if not rows:
        return [
            Finding(
                "note",
                f"no instance has recorded itself on this database in the last {RUNNING_WITHIN} s: none is running, "
                "or they run a release from before instances were recorded",
            )
        ]
    found = [*key_findings(rows), *alike_findings(rows)]
    if not any(finding.level == "fail" for finding in found):
        agree = (
            f"{len(rows)} running instance processes ({names(rows)}) agree on clouds and console mode, and accept "
            "each other's BROKER_SECRET_KEY"
            if len(rows) > 1
            else f"one instance process is running on this database ({names(rows)})"
        )
        found.insert(0, Finding("ok", agree))
    found += version_findings(rows)
    return found + (this_environment(me, rows) if me is not None else [])


# -- the admin page -------------------------------------------------------------------------------

# The columns whose values should be alike: a row whose value is not the most common one is marked.
COMPARED = ("version", "key_fingerprint", "clouds", "console_mode")


@dataclass(frozen=True)
class Listed:
    """One running process as /admin/instances shows it; ``odd`` names the columns where it is in the minority."""

    name: str
    role: str
    version: str
    key: str
    old_keys: int
    clouds: str
    console_mode: str
    started_at: datetime
    seen_at: datetime
    odd: frozenset[str]


@dataclass(frozen=True)
class Fleet:
    listed: list[Listed]
    findings: list[Finding]


def fleet() -> Fleet:
    """The running processes, each marked where it differs from most, and what check says of them."""
    rows = running()
    usual = (
        {column: Counter(getattr(row, column) for row in rows).most_common(1)[0][0] for column in COMPARED}
        if rows
        else {}
    )
    listed = [
        Listed(
            name=row.name,
            role=row.role,
            version=row.version,
            key=row.key_fingerprint[:8],
            old_keys=len(profile_of(row).fallbacks),
            clouds=row.clouds,
            console_mode=row.console_mode,
            started_at=aware(row.started_at),
            seen_at=aware(row.seen_at),
            odd=frozenset(column for column in COMPARED if getattr(row, column) != usual[column]),
        )
        for row in rows
    ]
    return Fleet(listed, findings(rows))


# -- this process: its row, kept fresh --------------------------------------------------------------
