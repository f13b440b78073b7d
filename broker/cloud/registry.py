"""Which clouds the broker talks to: clouds.yaml / ``OS_*`` via openstack.config, at start-up only."""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from broker.cloud.client import ComputeClient
from broker.cloud.types import Timeouts
from broker.config import REQUESTS_VARIABLES
from broker.config import ConfigError
from broker.config import console_types

log = logging.getLogger(__name__)

SWAP_POLICIES = ("idle", "always")
CONSOLE_MODES = ("iframe", "relay")


class CloudConfigError(Exception):
    """A cloud cannot be configured; the message names the cloud or variable."""


@dataclass(frozen=True)
class Cloud:
    """A configured cloud: its client and the console behaviour chosen for it."""

    name: str
    client: ComputeClient
    console_ttl: int
    console_swap: str
    # iframe: the page shows the cloud's own console URL; relay: the broker's viewer and relay.
    console_mode: str = "iframe"
    # What its servers' consoles can be: novnc (graphical), serial; as clouds.yaml's console_types says.
    console_types: tuple[str, ...] = ("novnc",)


def _mode(extra: Mapping, name: str, default: str) -> str:
    """Per-cloud ``console_mode`` from a clouds.yaml entry."""
    mode = str(extra.get("console_mode", default)).lower()
    if mode not in CONSOLE_MODES:
        raise CloudConfigError(f"cloud {name}: console_mode must be 'iframe' or 'relay', got {mode!r}")
    return mode


def _types(extra: Mapping, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """Per-cloud ``console_types`` from a clouds.yaml entry (a list such as ``[novnc, serial]``)."""
    if "console_types" not in extra:
        return default
    try:
        return console_types(extra["console_types"], "console_types")
    except ConfigError as exc:
        raise CloudConfigError(f"cloud {name}: {exc}") from None


def _options(extra: Mapping, name: str, default_ttl: int, default_swap: str) -> tuple[int, str]:
    """Per-cloud ``console_ttl`` and ``console_swap`` keys from a clouds.yaml entry."""
    try:
        ttl = int(extra.get("console_ttl", default_ttl))
    except (TypeError, ValueError):
        raise CloudConfigError(f"cloud {name}: console_ttl must be a whole number of seconds") from None
    swap = str(extra.get("console_swap", default_swap)).lower()
    if swap not in SWAP_POLICIES:
        raise CloudConfigError(f"cloud {name}: console_swap must be 'idle' or 'always', got {swap!r}")
    if ttl < 10:
        raise CloudConfigError(f"cloud {name}: console_ttl must be at least 10 seconds")
    return ttl, swap


def search_path(env: Mapping[str, str]) -> list[str]:
    """Where openstack.config looks for clouds.yaml, in its order."""
    from openstack.config import loader

    first = [env["OS_CLIENT_CONFIG_FILE"]] if env.get("OS_CLIENT_CONFIG_FILE") else []
    return list(dict.fromkeys(first + loader.CONFIG_FILES))


def check_files(paths: list[str]) -> list[str]:
    """The clouds files that exist; one that does not parse stops here with its file and line.

    openstack.config skips such a file without a word and then reports "Cloud X was not found".
    """
    import yaml

    found = []
    for path in dict.fromkeys(os.path.realpath(p) for p in paths):
        if not os.path.isfile(path):
            continue
        try:
            with open(path, encoding="utf-8") as handle:
                yaml.safe_load(handle)  # JSON is YAML too
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or type(exc).__name__
            raise CloudConfigError(f"{path}{where}: not valid YAML ({problem})") from None
        except OSError as exc:
            raise CloudConfigError(f"{path}: cannot be read ({exc.strerror})") from None
        found.append(path)
    return found


def credentials_files(loader=None) -> list[str]:
    """The clouds.yaml (and secure.yaml) openstack.config reads, the first of its search path that exists."""
    if loader is None:
        from openstack import config as os_config
        from openstack import exceptions as os_exc

        try:
            loader = os_config.OpenStackConfig()
        except os_exc.ConfigException:
            return []
    return [path for path in (loader.config_filename, loader.secure_config_filename) if path]


def exposure(path: str) -> str | None:
    """What is wrong with a credentials file that its group or other users may read; None when only its owner may.

    A warning, not a stop: container secrets are often mounted 0644.
    """
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None
    readers = [who for bit, who in ((stat.S_IRGRP, "its group"), (stat.S_IROTH, "every user")) if mode & bit]
    if not readers:
        return None
    return (
        f"{path} is readable by {' and '.join(readers)} (mode {mode:04o}), and it holds the clouds' "
        "credentials: chmod 600 it, owned by the broker's user"
    )


def not_found(name: str, loader, files: list[str], paths: list[str]) -> CloudConfigError:
    """Which files were searched and which cloud names they hold."""
    if not files:
        return CloudConfigError(
            f"cloud {name!r} is named (BROKER_CLOUDS / OS_CLOUD) but no clouds.yaml was found; searched: "
            f"{', '.join(paths)}. Write one there, or point OS_CLIENT_CONFIG_FILE at it."
        )
    names = sorted(set(loader.get_cloud_names()) - {"defaults"})
    return CloudConfigError(
        f"cloud {name!r} is not in {', '.join(files)}; the clouds there are: {', '.join(names) or 'none'}. "
        "Fix BROKER_CLOUDS / OS_CLOUD (a region is written name/Region) or the file."
    )


def auth_option_error(exc: TypeError, label: str, auth_type: str | None, source: str) -> Exception:
    """keystoneauth1 builds its plugin with the entry's auth keys as arguments: a typo is a TypeError."""
    typo = re.search(r"unexpected keyword argument '([^']+)'", str(exc))
    if not typo:
        return exc
    auth_type = auth_type or "password"
    return CloudConfigError(
        f"cloud {label} ({source}): auth has {typo.group(1)!r}, which the {auth_type} plugin does not take; "
        f"it takes: {', '.join(_plugin_options(auth_type))}"
    )


def _plugin_options(auth_type: str) -> list[str]:
    from keystoneauth1 import loading

    try:
        return [option.dest for option in loading.get_plugin_loader(auth_type).get_options()]
    except Exception:  # an unknown plugin: nothing useful to list
        return []


def load_clouds(
    names: tuple[str, ...],
    *,
    timeouts: Timeouts,
    default_ttl: int,
    default_swap: str,
    default_mode: str = "iframe",
    default_types: tuple[str, ...] = ("novnc",),
    env: Mapping[str, str] = os.environ,
) -> list[Cloud]:
    """Build one client per named clouds.yaml entry (``name`` or ``name/region``), or from ``OS_*``."""
    from openstack import config as os_config
    from openstack import exceptions as os_exc

    paths = search_path(env)
    files = check_files(paths) if names else []
    try:
        loader = os_config.OpenStackConfig()
    except os_exc.ConfigException as exc:
        raise CloudConfigError(f"cannot load cloud configuration: {exc}") from None
    source = loader.config_filename or "the OS_* variables"
    for problem in filter(None, map(exposure, credentials_files(loader) if names else [])):
        log.warning(problem)
    regions = []
    for name in names:
        cloud = name.partition("/")[0]
        if cloud not in loader.get_cloud_names():
            raise not_found(name, loader, files, paths)
        try:
            regions.append(_region(loader, name))
        except os_exc.ConfigException as exc:
            raise CloudConfigError(f"cloud {name}: {exc}") from None
        except TypeError as exc:
            auth_type = loader.cloud_config.get("clouds", {}).get(cloud, {}).get("auth_type")
            raise auth_option_error(exc, name, auth_type, source) from None
    if not names:
        try:
            regions.append(loader.get_one())
        except os_exc.ConfigException as exc:
            raise CloudConfigError(f"cannot load cloud configuration from the OS_* variables: {exc}") from None
        except TypeError as exc:
            raise auth_option_error(exc, "envvars", os.environ.get("OS_AUTH_TYPE"), source) from None
    clouds = []
    for region, label in zip(regions, names or ("envvars",), strict=True):
        try:
            session = region.get_session()
        except TypeError as exc:
            raise auth_option_error(exc, label, region.config.get("auth_type"), source) from None
        session.timeout = timeouts.read
        if not settings_for_requests(env):
            # requests reads its proxies, CA bundle and netrc from the environment on every call, scanning every
            # variable twice (about 0.2 ms of each mint's CPU): with none of them set, there is nothing to find.
            session.session.trust_env = False
        ttl, swap = _options(region.config, label, default_ttl, default_swap)
        client = ComputeClient(
            label,
            session,
            region_name=region.get_region_name("compute"),
            interface=region.get_interface("compute"),
            endpoint_override=region.config.get("compute_endpoint_override"),
            timeouts=timeouts,
        )
        mode, types = _mode(region.config, label, default_mode), _types(region.config, label, default_types)
        clouds.append(Cloud(label, client, ttl, swap, mode, types))
    if len({c.name for c in clouds}) != len(clouds):
        raise CloudConfigError("BROKER_CLOUDS names the same cloud twice")
    return clouds


def settings_for_requests(env: Mapping[str, str] = os.environ) -> bool:
    """True when the environment holds something requests takes from it.

    That is a proxy (any ``*_proxy``, any case), a CA bundle (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``) or a
    netrc file (``NETRC``, else ``~/.netrc`` or ``~/_netrc``).
    """
    if any(value and name.lower().endswith("_proxy") for name, value in env.items()):
        return True
    if any(env.get(name) for name in REQUESTS_VARIABLES - {"NETRC"}):
        return True
    netrc = env.get("NETRC")
    return any(os.path.exists(os.path.expanduser(path)) for path in ([netrc] if netrc else ["~/.netrc", "~/_netrc"]))


def _region(loader, name: str):
    cloud, _, region = name.partition("/")
    return loader.get_one(cloud=cloud, region_name=region or None)


def learned_hosts(clouds: list[Cloud]) -> tuple[str, ...]:
    """Hosts a console may come from when none are configured: the clouds' own API hosts.

    nova-novncproxy usually shares the API's host name (another port); a console
    elsewhere needs BROKER_CONSOLE_HOSTS.
    """
    hosts = []
    for cloud in clouds:
        for url in cloud.client.api_urls():
            host = (urlsplit(url).hostname or "").lower()
            if host and host not in hosts:
                hosts.append(host)
    return tuple(hosts)
