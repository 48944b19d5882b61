"""SSRF-safe HTTP for URLs that clients hand us: image inputs, uploads by URL, webhook targets.

    FetchError                 every failure of a fetch, turned into a local exception here
    ├── BlockedDestination     the URL, or an address its host resolves to, may not be reached
    ├── ResponseTooLarge       the body went over the byte cap
    └── FetchFailed            DNS, connection, TLS, timeout, too many redirects, bad status

How: httpx with a network backend that resolves the host once, refuses the request when any
resolved address is loopback, private, link-local, cloud metadata, carrier-grade NAT,
multicast, unspecified, reserved or IPv4-mapped (or embeds such an IPv4 address), and then
connects to the address it checked. The URL, the Host header and TLS SNI / certificate checks
keep the original host name. Redirects (GET only) are followed by hand, at most a few hops, and
every hop goes through the same check because every connection does. Bytes and total time are
capped. `allow_private_hosts` names the private targets an operator allows (host names, IPs or
CIDR networks), e.g. a local webhook receiver.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]

USER_AGENT = "kimiserve-fetch/0.1"
METADATA = frozenset(ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200"))
CGNAT = ipaddress.ip_network("100.64.0.0/10")
NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


class FetchError(Exception):
    """A URL could not be fetched or posted to; the message is safe to show the client."""


class BlockedDestination(FetchError):
    pass


class ResponseTooLarge(FetchError):
    pass


class FetchFailed(FetchError):
    pass


def refusal(addr: IPAddress) -> str | None:
    """Why this address may not be reached, or None when it is a public unicast address."""
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return "an IPv4-mapped IPv6 address"
        embedded = None
        if any(addr in net for net in NAT64):
            embedded = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        elif addr.sixtofour is not None:
            embedded = addr.sixtofour
        if embedded is not None:
            inner = refusal(embedded)
            return f"an IPv6 address embedding {inner}" if inner else None
        if addr.teredo is not None:
            return "a Teredo address"
    checks: tuple[tuple[bool, str], ...] = (
        (addr in METADATA, "a cloud metadata address"),
        (addr.is_unspecified, "an unspecified address"),
        (addr.is_loopback, "a loopback address"),
        (addr.is_link_local, "a link-local address"),
        (isinstance(addr, ipaddress.IPv4Address) and addr in CGNAT, "a carrier-grade NAT address"),
        (addr.is_multicast, "a multicast address"),
        (addr.is_reserved, "a reserved address"),
        (addr.is_private, "a private address"),
        (not addr.is_global, "a non-global address"),
    )
    return next((why for hit, why in checks if hit), None)


@dataclass(frozen=True)
class AddressPolicy:
    """Which destinations may be reached: public addresses, plus what the operator allows."""

    allowed_names: frozenset[str] = frozenset()
    allowed_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def allowing(cls, entries: Iterable[str]) -> AddressPolicy:
        names: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in entries:
            text = entry.strip().strip("[]").lower()
            if not text:
                continue
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                names.add(text.rstrip("."))
        return cls(frozenset(names), tuple(networks))

    def check(self, host: str, addresses: list[IPAddress]) -> IPAddress:
        """The address to connect to; raises unless every resolved address may be reached."""
        if not addresses:
            raise FetchFailed(f"Host {host!r} has no address.")
        if host.lower().rstrip(".") in self.allowed_names:
            return addresses[0]
        for addr in addresses:
            if any(addr.version == net.version and addr in net for net in self.allowed_networks):
                continue
            why = refusal(addr)
            if why is not None:
                raise BlockedDestination(f"Host {host!r} resolves to {why}, which may not be reached.")
        return addresses[0]


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class _CheckedBackend(httpcore.AsyncNetworkBackend):
    """Resolves once, checks every address, connects to the checked one."""

    def __init__(self, policy: AddressPolicy, resolver: Resolver) -> None:
        self._policy = policy
        self._resolver = resolver
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addr = await self.pick(host, port)
        return await self._inner.connect_tcp(
            str(addr), port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )

    async def pick(self, host: str, port: int) -> IPAddress:
        return self._policy.check(host, await self.resolve(host, port))

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        try:
            return [ipaddress.ip_address(host.strip("[]"))]
        except ValueError:
            pass
        try:
            found = await self._resolver(host, port)
        except OSError as exc:
            raise FetchFailed(f"Host {host!r} cannot be resolved.") from exc
        # Drop IPv6 zone ids ("fe80::1%eth0"); the address itself is what gets checked.
        return [ipaddress.ip_address(a.split("%", 1)[0]) for a in found]

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise BlockedDestination("Unix sockets may not be reached.")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


@dataclass(frozen=True)
class Fetched:
    url: str
    content: bytes
    content_type: str


class SafeFetcher:
    def __init__(
        self,
        policy: AddressPolicy,
        *,
        timeout_s: float,
        max_bytes: int,
        resolver: Resolver = system_resolver,
        max_redirects: int = 5,
    ) -> None:
        self._timeout_s = timeout_s
        self._max_bytes = max_bytes
        self._max_redirects = max_redirects
        self._backend = _CheckedBackend(policy, resolver)
        transport = httpx.AsyncHTTPTransport(trust_env=False)
        # httpx has no public seam for the network backend: give its transport our pool.
        transport._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            network_backend=self._backend,
            max_connections=64,
            keepalive_expiry=30.0,
        )
        self._client = httpx.AsyncClient(
            transport=transport,
            trust_env=False,
            follow_redirects=False,
            timeout=httpx.Timeout(timeout_s),
            headers={"User-Agent": USER_AGENT},
        )

    async def check_url(self, url: str) -> None:
        """Refuse a URL now (bad scheme, blocked or unresolvable host) without connecting."""
        parsed = _parse(url)
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._backend.pick(parsed.host, parsed.port or 443)
        except TimeoutError:
            raise FetchFailed(f"Host {parsed.host!r} cannot be resolved in time.") from None

    async def get(self, url: str) -> Fetched:
        """GET a URL, following redirects (each hop re-checked), within the byte and time caps."""
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._get(url)
        except TimeoutError:
            raise FetchFailed(f"Fetching the URL took longer than {self._timeout_s:g} s.") from None
        except httpx.HTTPError as exc:
            raise FetchFailed(f"Fetching the URL failed: {type(exc).__name__}.") from exc

    async def _get(self, url: str) -> Fetched:
        request = self._client.build_request("GET", _parse(url))
        for _ in range(self._max_redirects + 1):
            response = await self._client.send(request, stream=True)
            try:
                if response.next_request is not None:
                    request = response.next_request
                    _parse(str(request.url))
                    continue
                if response.status_code != 200:
                    raise FetchFailed(f"The URL answered HTTP {response.status_code}.")
                content = await self._read_capped(response)
                return Fetched(str(response.url), content, response.headers.get("content-type", ""))
            finally:
                await response.aclose()
        raise FetchFailed(f"The URL redirected more than {self._max_redirects} times.")

    async def _read_capped(self, response: httpx.Response) -> bytes:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max_bytes:
            raise ResponseTooLarge(f"The URL's body is over the {self._max_bytes}-byte limit.")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self._max_bytes:
                raise ResponseTooLarge(f"The URL's body is over the {self._max_bytes}-byte limit.")
            chunks.append(chunk)
        return b"".join(chunks)

    async def post(self, url: str, content: bytes, headers: dict[str, str], timeout_s: float) -> int:
        """POST once, never following a redirect; the response status (the body is drained, capped)."""
        try:
            async with asyncio.timeout(timeout_s):
                request = self._client.build_request(
                    "POST", _parse(url), content=content, headers=headers, timeout=httpx.Timeout(timeout_s)
                )
                response = await self._client.send(request, stream=True)
                try:
                    size = 0
                    async for chunk in response.aiter_bytes():
                        size += len(chunk)
                        if size > 64 * 1024:
                            break
                finally:
                    await response.aclose()
                return response.status_code
        except TimeoutError:
            raise FetchFailed(f"The request took longer than {timeout_s:g} s.") from None
        except httpx.HTTPError as exc:
            raise FetchFailed(f"The request failed: {type(exc).__name__}.") from exc

    async def aclose(self) -> None:
        await self._client.aclose()


def _parse(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise BlockedDestination("The URL is not valid.") from exc
    if parsed.scheme not in ("http", "https"):
        raise BlockedDestination("Only http and https URLs may be fetched.")
    if not parsed.host:
        raise BlockedDestination("The URL has no host.")
    return parsed
