"""Integration tests talk to a running shop through its gateway.

`loop` runs them against a sandbox and sets LOOP_URL_GATEWAY (the gateway's URL) and
LOOP_ROUTING_HEADERS (a JSON object of headers that route a request to the sandbox's forks);
every request sends those headers. Without LOOP_URL_GATEWAY the tests are skipped.
"""

import json
import os
import urllib.error
import urllib.request

import pytest


class Gateway:
    def __init__(self, url, headers):
        self.url = url.rstrip("/")
        self.headers = headers

    def request(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        headers = dict(self.headers, **({"Content-Type": "application/json"} if data else {}))
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def get(self, path):
        return self.request("GET", path)

    def post(self, path, body):
        return self.request("POST", path, body)


@pytest.fixture(scope="session")
def gateway():
    url = os.environ.get("LOOP_URL_GATEWAY")
    if not url:
        pytest.skip(
            "LOOP_URL_GATEWAY is not set: these tests need the shop running (loop sets it for a sandbox)"
        )
    headers = json.loads(os.environ.get("LOOP_ROUTING_HEADERS") or "{}")
    return Gateway(url, headers)
