"""The two ways to mint: through the broker over HTTP, and directly with keystoneauth1."""

from __future__ import annotations

import re
from dataclasses import dataclass

import requests
from keystoneauth1 import adapter as ks_adapter
from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3

CSRF_INPUT = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')
CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)"')
CONSOLE_BODY = {"remote_console": {"type": "novnc", "protocol": "vnc"}}


class BrokerError(RuntimeError):
    """The broker answered something the bench did not expect."""


def expect(response: requests.Response, status: int = 200) -> requests.Response:
    if response.status_code != status:
        raise BrokerError(
            f"{response.request.method} {response.url}: HTTP {response.status_code} {response.text[:300]}"
        )
    return response


@dataclass
class BrokerClient:
    """A signed-in browser, as far as the bench needs one."""

    url: str
    http: requests.Session
    csrf: str = ""

    @classmethod
    def sign_in(cls, url: str, username: str, password: str) -> BrokerClient:
        """GET /login, POST the form, then read the CSRF token of a signed-in page."""
        client = cls(url, requests.Session())
        page = expect(client.http.get(f"{url}/login", timeout=30)).text
        form = {"username": username, "password": password, "csrf_token": CSRF_INPUT.search(page).group(1)}
        done = client.http.post(f"{url}/login", data=form, allow_redirects=False, timeout=30)
        if done.status_code not in (302, 303) or "/login" in done.headers.get("Location", ""):
            raise BrokerError(f"sign-in failed: HTTP {done.status_code}")
        # /admin/ is a signed-in page that never touches a cloud (the list page would fetch it).
        client.csrf = CSRF_META.search(expect(client.http.get(f"{url}/admin/", timeout=30)).text).group(1)
        return client

    def clone(self) -> BrokerClient:
        """The same sign-in on a new connection (another tab, or another worker)."""
        http = requests.Session()
        http.cookies.update(self.http.cookies)
        return BrokerClient(self.url, http, self.csrf)

    def close(self) -> None:
        self.http.close()

    def as_job(self) -> dict:
        """What a load generator process needs to act as this signed-in browser."""
        return {"url": self.url, "cookies": self.http.cookies.get_dict(), "csrf": self.csrf}

    def mint(self, server_id: str, cloud: str) -> str:
        """POST /api/consoles/<id>: the console URL."""
        response = self.http.post(
            f"{self.url}/api/consoles/{server_id}",
            params={"cloud": cloud},
            headers={"X-CSRFToken": self.csrf},
            json={"reason": "load"},
            timeout=60,
        )
        return expect(response).json()["url"]

    def servers(self, query: str = "", cloud: str = "", limit: int | None = None) -> list[dict]:
        """GET /api/servers?q=&cloud=&limit=."""
        params = {"q": query, "cloud": cloud, "limit": limit}
        response = self.http.get(f"{self.url}/api/servers", params=params, timeout=60)
        return expect(response).json()["servers"]

    def page(self, path: str, **params: str) -> bytes:
        """A page or static file, uncompressed, as served."""
        response = self.http.get(
            f"{self.url}{path}", params=params, headers={"Accept-Encoding": "identity"}, timeout=60
        )
        return expect(response).content


def direct_adapter(os_env: dict[str, str]) -> ks_adapter.Adapter:
    """keystoneauth1 as a careful script would use it: one Session, one token, a compute Adapter."""
    auth = v3.Password(
        auth_url=os_env["OS_AUTH_URL"],
        username=os_env["OS_USERNAME"],
        password=os_env["OS_PASSWORD"],
        project_id=os_env["OS_PROJECT_ID"],
        user_domain_name=os_env["OS_USER_DOMAIN_NAME"],
    )
    session = ks_session.Session(auth=auth)
    return ks_adapter.Adapter(session, service_type="compute", interface="public", region_name=os_env["OS_REGION_NAME"])


def direct_mint(adapter: ks_adapter.Adapter, server_id: str) -> str:
    """The same mint the broker makes: remote-consoles at microversion 2.6."""
    response = adapter.post(f"/servers/{server_id}/remote-consoles", json=CONSOLE_BODY, microversion="2.6")
    return response.json()["remote_console"]["url"]


def direct_list(adapter: ks_adapter.Adapter, page_size: int = 1000) -> int:
    """Every server, following Nova's ``servers_links`` next pages; the count."""
    return len(direct_servers(adapter, page_size))


def direct_servers(adapter: ks_adapter.Adapter, page_size: int = 1000) -> list[dict]:
    """Every server, following Nova's ``servers_links`` next pages."""
    servers, params = [], {"limit": page_size}
    while True:
        body = adapter.get("/servers/detail", params=params).json()
        servers += body["servers"]
        if not any(link.get("rel") == "next" for link in body.get("servers_links", [])):
            return servers
        params = {"limit": page_size, "marker": body["servers"][-1]["id"]}
