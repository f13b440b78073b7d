"""The server list in Chromium: the instant search (static/js/list.js) rebuilds exactly what the
server rendered, cloud trouble and ``?cloud=`` included.

These tests need no console lab: each starts a broker in this process on stand-in clouds whose
faults it sets (one healthy, one whose refresh fails, one failing, one that never answers).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import parse_qs
from urllib.parse import urlencode
from urllib.parse import urlparse

import pytest
from playwright.sync_api import Browser
from playwright.sync_api import BrowserContext
from playwright.sync_api import Page
from werkzeug.serving import make_server

from broker import create_app
from broker import state
from broker.cloud.registry import Cloud
from broker.cloud.resilience import RetryPolicy
from broker.cloud.types import Timeouts
from broker.demo import serve
from broker.demo.cloud import FakeCloud
from broker.demo.cloud import Server
from broker.extensions import db
from broker.extensions import limiter
from broker.services import policy
from broker.services import users
from broker.services.inventory import Inventory
from tests.support import AGENT
from tests.support import broker_env
from tests.support import fleet
from tests.support import make_client
from tests.support import server_id

# Longer than a test: a hung cloud answers only when the test ends.
HANG = 30.0
# What list.js rebuilds, as a tree of tags, sorted attributes and non-blank text.
SNAPSHOT_JS = """() => {
  const shape = (node) => node.nodeType === Node.TEXT_NODE ? node.data : [
    node.tagName,
    [...node.attributes].map((a) => `${a.name}=${a.value}`).sort(),
    [...node.childNodes]
      .filter((n) => n.nodeType === Node.ELEMENT_NODE || (n.nodeType === Node.TEXT_NODE && n.data.trim()))
      .map(shape),
  ];
  return ["#cloud-notices", "#count", "#servers tbody", "#no-match"].map((s) => shape(document.querySelector(s)));
}"""


class FrozenClock:
    """The inventory's clock: cached lists age only when a test says so."""

    now = 0.0

    def __call__(self) -> float:
        return self.now


def far_cloud() -> FakeCloud:
    servers = [Server(id=server_id(200 + n), name=f"far-{n}", az="az-far") for n in (1, 2)]
    return FakeCloud(secret="far-secret", servers=servers, region="RegionTwo")


@dataclass
class Broker:
    """A broker listening on loopback."""

    url: str
    inventory: Inventory
    stop: Callable[[], None]


def start_broker(tmp_path, clouds: dict[str, FakeCloud]) -> Broker:
    """A broker serving ``clouds`` on loopback, with the agent allowed on all of them."""
    running = [serve.start(fake) for fake in clouds.values()]
    # One attempt and a long read: a hung cloud stays "not answered yet" instead of timing out.
    patient = {"timeouts": Timeouts(connect=2, read=HANG + 10), "retry": RetryPolicy(attempts=1)}
    configured = [Cloud(name, make_client(fake, name, **patient), 600, "idle") for name, fake in clouds.items()]
    app = create_app(
        {
            "ENV": broker_env(tmp_path),
            "CLOUDS": configured,
            "INSTANCE_PATH": str(tmp_path / "instance"),
            "TESTING": True,
        }
    )
    limiter.reset()
    with app.app_context():
        users.add(*AGENT, role="agent")
        policy.add_rule(user=AGENT[0], cloud="*", clouds=list(clouds))
        db.session.commit()
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()

    def stop() -> None:
        for run in running:
            run.cloud.release_hangs()
        server.shutdown()
        for run in running:
            run.stop()

    return Broker(f"http://127.0.0.1:{server.server_port}", state.of(app).consoles.inventory, stop)


def signed_in(browser: Browser, broker: Broker) -> BrowserContext:
    """A browser context signed in to ``broker`` as the agent."""
    context = browser.new_context(base_url=broker.url)
    page = context.new_page()
    page.goto("/login")
    page.fill("#username", AGENT[0])
    page.fill("#password", AGENT[1])
    with page.expect_navigation():
        page.click("#sign-in")
    page.close()
    return context


@contextmanager
def list_of(browser: Browser, tmp_path, clouds: dict[str, FakeCloud], prepare=None) -> Iterator[BrowserContext]:
    """A signed-in browser context on a broker of ``clouds`` whose inventory ``prepare`` set up first."""
    broker = start_broker(tmp_path, clouds)
    try:
        if prepare:
            prepare(broker.inventory)
        context = signed_in(browser, broker)
        yield context
        context.close()
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def healthy(browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    """One cloud, the test fleet, nothing wrong; shared by the module's tests (they change nothing)."""
    clouds = {"lab": FakeCloud(secret="lab-secret", servers=fleet())}
    with list_of(browser, tmp_path_factory.mktemp("healthy"), clouds) as context:
        yield context


def snapshot(page: Page) -> list:
    return page.evaluate(SNAPSHOT_JS)


def server_rendered(page: Page, **params: str) -> list:
    """The list the server renders for ``params``, in a tab of its own."""
    tabs = page.context.pages
    other = tabs[1] if len(tabs) > 1 else page.context.new_page()
    other.goto("/?" + urlencode({k: v for k, v in params.items() if v}))
    return snapshot(other)


def wait_for_address(page: Page, query: str, cloud: str) -> None:
    """list.js writes the address after it rendered: wait until it shows this search."""
    page.wait_for_function(
        "([q, cloud]) => { const p = new URL(location.href).searchParams; "
        "return p.get('q') === q && p.get('cloud') === cloud; }",
        arg=[query or None, cloud or None],
    )


def search(page: Page, query: str, cloud: str = "") -> list:
    page.fill("#q", query)
    wait_for_address(page, query, cloud)
    return snapshot(page)


def hrefs(page: Page) -> list[str]:
    return page.eval_on_selector_all(
        "#servers tbody a.server-link", "links => links.map((a) => a.getAttribute('href'))"
    )


@pytest.mark.parametrize("cloud", ["", "lab", "nowhere"], ids=["all", "narrowed", "unknown-cloud"])
def test_search_rebuilds_what_the_server_rendered(healthy: BrowserContext, cloud: str) -> None:
    page = healthy.new_page()
    page.goto("/?" + urlencode({"cloud": cloud}) if cloud else "/")
    opened = snapshot(page)
    for query in ("<b>bold", "zzz"):
        assert search(page, query, cloud) == server_rendered(page, q=query, cloud=cloud), query
    assert search(page, "", cloud) == opened
    links = hrefs(page)
    assert len(links) == (0 if cloud == "nowhere" else 7)
    assert all(link.endswith("?cloud=lab") for link in links)
    # The hostile name stays text: no element came from it.
    assert page.locator("#servers b, #servers script").count() == 0
    for tab in healthy.pages:
        tab.close()


def troubled_clouds() -> dict[str, FakeCloud]:
    down = FakeCloud(secret="down-secret", servers=[])
    down.faults.error_message = "<img src=x> quota & limits"
    down.faults.fail_next["list"] = [403] * 100
    slow = FakeCloud(secret="slow-secret", servers=[])
    slow.faults.hang["list"] = HANG
    return {
        "lab": FakeCloud(secret="lab-secret", servers=fleet()),
        "far/RegionTwo": far_cloud(),
        "down": down,
        "slow": slow,
    }


def test_cloud_trouble_and_a_stale_list_survive_the_search(browser: Browser, tmp_path) -> None:
    clouds = troubled_clouds()
    clock = FrozenClock()

    def age_the_far_list(inventory: Inventory) -> None:
        inventory.clock, inventory.cold_wait = clock, 0.3
        inventory.overview()  # every list as of time 0 (the slow one is still coming)
        clock.now = 200  # all due for a refresh, and far's fails
        clouds["far/RegionTwo"].faults.fail_next["list"] = [500] * 100

    with list_of(browser, tmp_path, clouds, age_the_far_list) as context:
        check_trouble(context.new_page())


def check_trouble(page: Page) -> None:
    page.goto("/")
    notices = page.locator("#cloud-notices p")
    assert notices.all_text_contents() == [
        "Cloud down could not be listed: Listing servers: <img src=x> quota & limits",
        "Cloud slow could not be listed: cloud slow has not answered yet; its servers will appear when it does.",
        "Showing the list of cloud far/RegionTwo from 3 min ago; refreshing it failed: "
        "Listing servers: cloud far/RegionTwo answered HTTP 500 (computeFault).",
    ]
    opened = snapshot(page)
    assert search(page, "far") == server_rendered(page, q="far")
    assert search(page, "") == opened
    assert page.locator("#cloud-notices img").count() == 0

    page.select_option("#cloud-filter", "far/RegionTwo")
    wait_for_address(page, "", "far/RegionTwo")
    assert snapshot(page) == server_rendered(page, cloud="far/RegionTwo")
    assert hrefs(page) == [f"/console/{server_id(200 + n)}?cloud=far/RegionTwo" for n in (1, 2)]
    assert notices.all_text_contents()[0].startswith("Showing the list of cloud far/RegionTwo")
    assert search(page, "far-2", "far/RegionTwo") == server_rendered(page, q="far-2", cloud="far/RegionTwo")
    assert parse_qs(urlparse(page.url).query) == {"q": ["far-2"], "cloud": ["far/RegionTwo"]}
