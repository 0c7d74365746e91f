"""Fetching a URL a client named, without letting the client reach inside the server's network.

A TAP upload may name an http(s) URL, which the service then fetches: server-side request
forgery unless the addresses are checked. Every connection this module opens (the first one
and one per redirect) resolves the host itself, refuses it when any of its addresses is not a
public unicast address (loopback, private, link-local, shared, multicast, unspecified or
reserved), and connects only to the addresses it checked, so a name cannot resolve one way for
the check and another way for the connection. An operator allows internal hosts by name or
network (``[service] upload_url_allow``). Environment proxies are ignored; the fetch has a size
limit and an overall deadline.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import NameResolutionError

from service.errors import DALIError, LimitError, UsageError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: Redirects followed; each one is checked like the first request.
MAX_REDIRECTS = 5
_CHUNK = 1 << 16


class AddressRefused(Exception):
    """A host resolves to an address the service does not connect to.

    Not an OSError, so urllib3 neither retries nor wraps it: it reaches :func:`fetch_url` as raised.
    """


def address_kind(address: IPAddress) -> str | None:
    """Why the service will not connect to ``address`` ("loopback", "private" …), or None if it may."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for kind, flag in (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
    ):
        if flag:
            return kind
    return None if address.is_global else "non-public"


@dataclass(frozen=True)
class AddressPolicy:
    """Which hosts a fetch may connect to: public addresses, and the operator's allowed names and networks."""

    names: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_config(cls, entries: Iterable[str]) -> AddressPolicy:
        """Entries are host names (``data.example.org``) or addresses and networks (``10.1.0.0/16``)."""
        names, networks = set(), []
        for entry in entries:
            text = str(entry).strip()
            try:
                networks.append(ipaddress.ip_network(text.strip("[]"), strict=False))
            except ValueError:
                names.add(text.lower().rstrip("."))
        return cls(frozenset(names), tuple(networks))

    def check(self, host: str, address: IPAddress) -> None:
        if host.lower().rstrip(".") in self.names or any(address in net for net in self.networks):
            return
        kind = address_kind(address)
        if kind is not None:
            literal = host.strip("[]") == str(address)
            what = f"is a {kind} address" if literal else f"resolves to a {kind} address"
            raise AddressRefused(f"{host} {what} ({address}), which this service does not fetch from")

    def connect(self, conn: HTTPConnection) -> socket.socket:
        """The socket of one connection: resolve, check every address, connect to a checked one."""
        host = conn._dns_host
        try:
            found = socket.getaddrinfo(host, conn.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise NameResolutionError(conn.host, conn, exc) from exc
        for *_, sockaddr in found:
            self.check(conn.host, ipaddress.ip_address(sockaddr[0].split("%")[0]))
        timeout = conn.timeout if isinstance(conn.timeout, int | float) else None
        error: OSError | None = None
        for family, kind, proto, _, sockaddr in found:
            sock = socket.socket(family, kind, proto)
            try:
                for option in conn.socket_options or ():
                    sock.setsockopt(*option)
                sock.settimeout(timeout)
                sock.connect(sockaddr)
                return sock
            except OSError as exc:
                sock.close()
                error = exc
        raise error or OSError(f"no address for {host}")


def _session(policy: AddressPolicy) -> requests.Session:
    """A session whose every connection goes through ``policy``."""

    class Guarded(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return policy.connect(self)

    class GuardedTLS(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            return policy.connect(self)

    class Pool(HTTPConnectionPool):
        ConnectionCls = Guarded

    class PoolTLS(HTTPSConnectionPool):
        ConnectionCls = GuardedTLS

    class Adapter(HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": Pool, "https": PoolTLS}

    session = requests.Session()
    session.trust_env = False  # no proxies or netrc from the server's environment
    session.max_redirects = MAX_REDIRECTS
    session.mount("http://", Adapter())
    session.mount("https://", Adapter())
    return session


def fetch_url(
    url: str,
    what: str,
    limit: int,
    timeout: float,
    allow: Sequence[str] = (),
    too_large: Callable[[], DALIError] | None = None,
) -> bytes:
    """GET ``url`` for the client (``what`` names it in messages): at most ``limit`` bytes, ``timeout``
    seconds in all, only from addresses :class:`AddressPolicy` accepts; every failure is a usage error
    (``too_large()`` the one raised beyond ``limit``)."""
    too_large = too_large or (lambda: LimitError(f"{what}: {url} is larger than the limit of {limit} bytes"))
    if urlsplit(url).scheme.lower() not in ("http", "https") or not urlsplit(url).hostname:
        raise UsageError(f"{what}: {url!r} is not an http(s) URL with a host")
    deadline = time.monotonic() + timeout
    session = _session(AddressPolicy.from_config(allow))
    try:
        with session, session.get(url, stream=True, timeout=timeout) as response:
            if response.status_code != 200:
                raise UsageError(f"{what}: {url} answered HTTP {response.status_code}")
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > limit:
                raise too_large()
            return bounded(_until(response.iter_content(_CHUNK), deadline, what, url), limit, too_large)
    except AddressRefused as exc:
        raise UsageError(f"{what}: cannot fetch {url}: {exc}") from None
    except requests.TooManyRedirects:
        raise UsageError(f"{what}: {url} redirects more than {MAX_REDIRECTS} times") from None
    except requests.Timeout:
        raise UsageError(f"{what}: fetching {url} took longer than {timeout:g} s") from None
    except requests.ConnectionError:
        raise UsageError(f"{what}: cannot connect to {urlsplit(url).hostname} to fetch {url}") from None
    except requests.RequestException:
        raise UsageError(f"{what}: cannot fetch {url}") from None


def _until(chunks: Iterable[bytes], deadline: float, what: str, url: str) -> Iterator[bytes]:
    for chunk in chunks:
        if time.monotonic() > deadline:
            raise UsageError(f"{what}: fetching {url} took too long")
        yield chunk


def bounded(chunks: Iterable[bytes], limit: int, too_large: Callable[[], DALIError]) -> bytes:
    """Join chunks, raising ``too_large()`` beyond ``limit`` bytes (without reading much beyond it)."""
    data = bytearray()
    for chunk in chunks:
        data += chunk
        if len(data) > limit:
            raise too_large()
    return bytes(data)
