"""What the factory attaches to the app, reached through one typed object instead of string keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import Flask
from flask import current_app

if TYPE_CHECKING:
    from limits import RateLimitItem

    from broker.config import Settings
    from broker.demo import FakeCloud
    from broker.services.consoles import ConsoleService
    from broker.services.power import PowerService
    from broker.shared import SharedRedis
    from broker.throttle import Throttle

KEY = "broker"


@dataclass
class BrokerState:
    """The app's settings and long-lived services."""

    settings: Settings
    throttle: Throttle
    login_limit: RateLimitItem
    consoles: ConsoleService | None = None
    power: PowerService | None = None
    demo_cloud: FakeCloud | None = None
    # The deployment's Redis, when BROKER_REDIS_URL is set.
    redis: SharedRedis | None = None


def attach(app: Flask, state: BrokerState) -> BrokerState:
    app.extensions[KEY] = state
    return state


def of(app: Flask | None = None) -> BrokerState:
    """The state of ``app`` (default: the current app)."""
    return (app or current_app).extensions[KEY]


def settings() -> Settings:
    return of().settings


def consoles() -> ConsoleService:
    return of().consoles


def power() -> PowerService:
    return of().power


def throttle() -> Throttle:
    return of().throttle


def redis() -> SharedRedis | None:
    return of().redis
