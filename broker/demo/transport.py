"""A requests transport that hands calls for one base URL to a WSGI app in process.

The demo cloud's Keystone and Nova APIs are reached through it, so the broker's
real cloud client (keystoneauth1 over requests) runs unchanged, with no socket,
no port to agree on and no worker calling itself.
"""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO

import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.response import HTTPResponse
from werkzeug.test import Client


class WSGITransport(BaseAdapter):
    """Send requests for a mounted prefix to ``app`` instead of the network."""

    def __init__(self, app: Callable, headers: Callable[[], dict] | None = None) -> None:
        super().__init__()
        self.client = Client(app)
        self.extra_headers = headers

    def send(self, request: requests.PreparedRequest, **kwargs) -> requests.Response:
        headers = dict(request.headers)
        if self.extra_headers:
            headers.update(self.extra_headers())
        result = self.client.open(
            request.url,
            method=request.method,
            headers=headers,
            data=request.body or b"",
        )
        response = requests.Response()
        response.status_code = result.status_code
        response.headers = CaseInsensitiveDict(result.headers.to_wsgi_list())
        body = result.get_data()
        response.raw = HTTPResponse(body=BytesIO(body), preload_content=False, status=result.status_code)
        response._content = body
        response.url = request.url
        response.request = request
        response.reason = result.status.partition(" ")[2]
        response.encoding = "utf-8"
        return response

    def close(self) -> None:
        pass
