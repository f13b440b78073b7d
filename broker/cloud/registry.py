"""Which clouds the broker talks to: clouds.yaml / ``OS_*`` via openstack.config, at start-up only."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from broker.cloud.client import ComputeClient
from broker.cloud.client import Timeouts

SWAP_POLICIES = ("idle", "always")


class CloudConfigError(Exception):
    """A cloud cannot be configured; the message names the cloud or variable."""


@dataclass(frozen=True)
class Cloud:
    """A configured cloud: its client and the console behaviour chosen for it."""

    name: str
    client: ComputeClient
    console_ttl: int
    console_swap: str


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


def load_clouds(names: tuple[str, ...], *, timeouts: Timeouts, default_ttl: int, default_swap: str) -> list[Cloud]:
    """Build one client per named clouds.yaml entry (``name`` or ``name/region``), or from ``OS_*``."""
    from openstack import config as os_config
    from openstack import exceptions as os_exc

    try:
        loader = os_config.OpenStackConfig()
        regions = [_region(loader, name) for name in names] if names else [loader.get_one()]
    except os_exc.ConfigException as exc:
        source = "BROKER_CLOUDS / OS_CLOUD" if names else "the OS_* variables"
        raise CloudConfigError(f"cannot load cloud configuration from {source}: {exc}") from None
    clouds = []
    for region, label in zip(regions, names or ("envvars",), strict=True):
        session = region.get_session()
        session.timeout = timeouts.read
        ttl, swap = _options(region.config, label, default_ttl, default_swap)
        client = ComputeClient(
            label,
            session,
            region_name=region.get_region_name("compute"),
            interface=region.get_interface("compute"),
            endpoint_override=region.config.get("compute_endpoint_override"),
            timeouts=timeouts,
        )
        clouds.append(Cloud(label, client, ttl, swap))
    if len({c.name for c in clouds}) != len(clouds):
        raise CloudConfigError("BROKER_CLOUDS names the same cloud twice")
    return clouds


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
