"""Upload URLs cannot reach inside the server's network (SSRF): addresses checked after DNS
resolution and on every redirect, an operator's allow-list, size and time limits.

HTTP traffic in these tests goes to loopback addresses only: small servers on 127.0.0.2 and
127.0.0.3 stand in for an outside host and for an internal one, and count what reaches them.
Other kinds of address are checked without connecting anywhere.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import requests

from service.errors import LimitError, UsageError
from service.fetch import AddressPolicy, AddressRefused, address_kind, fetch_url
from tests.service.test_datalink import error_text
from tests.service.test_upload import allow_urls, round_trip_votable, sync_post

TABLE = round_trip_votable("tabledata")


@contextmanager
def canary(host: str) -> Iterator[SimpleNamespace]:
    """An HTTP server on ``host`` (/table.vot, /redirect?to=URL, /loop, /slow, /huge) counting requests."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            hits.append(self.path)
            path, query = urlsplit(self.path).path, parse_qs(urlsplit(self.path).query)
            if path == "/loop":
                self.send_response(302)
                self.send_header("Location", "/loop")
                self.end_headers()
            elif path == "/redirect":
                self.send_response(302)
                self.send_header("Location", query["to"][0])
                self.end_headers()
            elif path == "/slow":
                time.sleep(10)
                self._send(TABLE)
            elif path == "/huge":  # no Content-Length: the limit must hold while reading
                self.send_response(200)
                self.end_headers()
                try:
                    for _ in range(64):
                        self.wfile.write(b"x" * 65536)
                except BrokenPipeError:  # the service stopped reading at its limit
                    pass
            else:
                self._send(TABLE)

        def _send(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/x-votable+xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer((host, 0), Handler)
    server.daemon_threads, server.block_on_close = True, False  # a sleeping /slow does not hold teardown
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield SimpleNamespace(url=f"http://{host}:{server.server_address[1]}", hits=hits)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def outside():
    with canary("127.0.0.2") as server:
        yield server


@pytest.fixture()
def inside():
    with canary("127.0.0.3") as server:
        yield server


def upload_query(live_server, url: str) -> requests.Response:
    return sync_post(live_server, {"QUERY": "SELECT COUNT(*) AS n FROM TAP_UPLOAD.t1", "UPLOAD": f"t1,{url}"})


# -- which addresses --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped IPv6
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd12:3456::1", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "non-public"),  # carrier-grade NAT
        ("192.0.2.10", "private"),  # documentation range
        ("8.8.8.8", None),
        ("2001:4860:4860::8888", None),
        ("193.48.0.1", None),
    ],
)
def test_address_kinds(address, kind):
    assert address_kind(ipaddress.ip_address(address)) == kind


def test_allow_list_by_name_and_network():
    policy = AddressPolicy.from_config(["data.internal.example", "10.20.0.0/16", "[fd00::5]"])
    policy.check("data.internal.example", ipaddress.ip_address("10.99.0.1"))  # by name
    policy.check("DATA.internal.example.", ipaddress.ip_address("127.0.0.1"))
    policy.check("other.example", ipaddress.ip_address("10.20.3.4"))  # by network
    policy.check("other.example", ipaddress.ip_address("fd00::5"))
    for host, address in (("other.example", "10.21.0.1"), ("x.example", "169.254.169.254")):
        with pytest.raises(AddressRefused, match="resolves to a"):
            policy.check(host, ipaddress.ip_address(address))


# -- through the service ------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.3", "localhost", "127.0.0.3.nip.invalid"])
def test_upload_url_inside_the_network_is_refused(live_server, inside, host):
    url = inside.url.replace("127.0.0.3", host) + "/table.vot"
    response = upload_query(live_server, url)
    assert response.status_code == 400
    message = error_text(response)
    if host.endswith(".invalid"):  # a name that does not resolve: said so, nothing fetched
        assert "cannot connect" in message or "cannot fetch" in message
    else:
        assert "loopback address" in message and "does not fetch from" in message
    assert inside.hits == []
    assert "Error" not in message and "<" not in message  # no Python class names or reprs


def test_the_service_itself_is_refused(live_server):
    """The original report: an upload URL pointing at the service's own loopback port."""
    query = quote("SELECT TOP 1 obs_publisher_did FROM ivoa.obscore")
    response = upload_query(live_server, f"{live_server.url}/tap/sync?LANG=ADQL&QUERY={query}")
    assert response.status_code == 400 and "127.0.0.1 is a loopback address" in error_text(response)


def test_allowed_host_is_fetched(live_server, outside, monkeypatch):
    allow_urls(monkeypatch, live_server, "127.0.0.2")
    response = upload_query(live_server, f"{outside.url}/table.vot")
    assert response.status_code == 200, error_text(response)
    assert b">23<" in response.content  # COUNT(*) of the 23-row table
    assert outside.hits == ["/table.vot"]


def test_redirect_into_the_network_is_refused(live_server, outside, inside, monkeypatch):
    """An allowed (outside) host redirects to an internal one: the redirect is checked too."""
    allow_urls(monkeypatch, live_server, "127.0.0.2")
    target = quote(f"{inside.url}/table.vot", safe="")
    response = upload_query(live_server, f"{outside.url}/redirect?to={target}")
    assert response.status_code == 400 and "127.0.0.3 is a loopback address" in error_text(response)
    assert len(outside.hits) == 1 and inside.hits == []
    allow_urls(monkeypatch, live_server, "127.0.0.2", "127.0.0.3")  # both allowed: the redirect is followed
    assert upload_query(live_server, f"{outside.url}/redirect?to={target}").status_code == 200
    assert inside.hits == ["/table.vot"]


def test_redirect_loops_are_cut(outside):
    with pytest.raises(UsageError, match="redirects more than 5 times"):
        fetch_url(f"{outside.url}/loop", "UPLOAD t1", 10**6, 10, allow=["127.0.0.2"])
    assert len(outside.hits) == 6


def test_fetch_time_and_size_limits(live_server, outside, monkeypatch):
    allow_urls(monkeypatch, live_server, "127.0.0.2")
    monkeypatch.setitem(live_server.config["service"], "upload_timeout", 1)
    started = time.monotonic()
    response = upload_query(live_server, f"{outside.url}/slow")
    assert response.status_code == 400 and "took longer than 1 s" in error_text(response)
    assert time.monotonic() - started < 8  # gave up long before the server would have answered
    monkeypatch.setitem(live_server.config["service"], "upload_timeout", 30)
    monkeypatch.setitem(live_server.config["service"], "upload_limit", 100_000)
    response = upload_query(live_server, f"{outside.url}/huge")
    assert response.status_code == 413 and "upload limit of 100000 bytes" in error_text(response)
    with pytest.raises(LimitError):
        fetch_url(f"{outside.url}/huge", "x", 1000, 10, allow=["127.0.0.2"])
