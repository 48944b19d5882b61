"""The SSRF-safe fetcher: every refused address class, names that resolve to them, redirects,
and the byte and time caps, against real HTTP servers on loopback."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator

import pytest

from kimiserve.media.fetch import (
    AddressPolicy,
    BlockedDestination,
    FetchFailed,
    ResponseTooLarge,
    SafeFetcher,
    refusal,
)
from tests.media.stub import Received, Reply, Stub

REFUSED = {
    "127.0.0.1": "loopback",
    "127.255.0.9": "loopback",
    "::1": "loopback",
    "10.1.2.3": "private",
    "172.16.0.1": "private",
    "192.168.1.1": "private",
    "fc00::1": "private",
    "169.254.1.1": "link-local",
    "fe80::1": "link-local",
    "169.254.169.254": "metadata",
    "fd00:ec2::254": "metadata",
    "100.64.0.1": "carrier-grade NAT",
    "100.127.255.254": "carrier-grade NAT",
    "224.0.0.1": "multicast",
    "ff02::1": "multicast",
    "0.0.0.0": "unspecified",
    "::": "unspecified",
    "240.0.0.1": "reserved",
    "255.255.255.255": "reserved",
    "::ffff:127.0.0.1": "IPv4-mapped",
    "::ffff:8.8.8.8": "IPv4-mapped",
    "64:ff9b::a00:1": "embedding a private",
    "2002:c0a8:101::1": "embedding a private",
    "192.0.2.1": "",  # TEST-NET documentation range: not global
}
ALLOWED = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "64:ff9b::808:808"]


@pytest.mark.parametrize("address", sorted(REFUSED))
def test_refused_address_classes(address: str) -> None:
    why = refusal(ipaddress.ip_address(address))
    assert why is not None
    assert REFUSED[address] in why


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_pass(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


def fake_resolver(table: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    calls: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        if host not in table:
            raise OSError("no such host")
        return table[host]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


STRICT = AddressPolicy()  # public addresses only


def fetcher(policy: AddressPolicy = STRICT, **kw: object) -> SafeFetcher:
    return SafeFetcher(
        policy, timeout_s=kw.pop("timeout_s", 5.0), max_bytes=kw.pop("max_bytes", 1 << 20), **kw
    )  # type: ignore[arg-type]


@pytest.fixture
def stub() -> AsyncIterator[Stub]:
    def script(request: Received, index: int) -> Reply:
        if request.path.startswith("/redirect-to/"):
            return Reply(302, headers={"Location": request.path.removeprefix("/redirect-to/")})
        if request.path == "/big":
            return Reply(200, b"x" * (2 << 20))
        if request.path == "/big-chunked":
            return Reply(200, b"x" * (2 << 20), chunked=True)
        if request.path == "/slow":
            return Reply(200, b"late", delay_s=3.0)
        return Reply(200, b"hello", {"Content-Type": "text/plain"})

    with Stub(script) as server:
        yield server


async def test_loopback_literal_is_refused_without_connecting(stub: Stub) -> None:
    f = fetcher()
    try:
        with pytest.raises(BlockedDestination, match="loopback"):
            await f.get(f"{stub.url}/secret")
        with pytest.raises(BlockedDestination):
            await f.get(f"http://[::ffff:127.0.0.1]:{stub.port}/secret")
    finally:
        await f.aclose()
    assert stub.snapshot() == []


async def test_name_resolving_to_loopback_is_refused(stub: Stub) -> None:
    f = fetcher()
    try:
        with pytest.raises(BlockedDestination, match="'localhost'"):
            await f.get(f"http://localhost:{stub.port}/secret")
    finally:
        await f.aclose()
    assert stub.snapshot() == []


@pytest.mark.parametrize(
    "addresses", [["10.0.0.5"], ["169.254.169.254"], ["93.184.216.34", "127.0.0.1"], ["100.64.1.1"]]
)
async def test_name_resolving_to_private_is_refused(addresses: list[str]) -> None:
    f = fetcher(resolver=fake_resolver({"public.example": addresses}))
    try:
        with pytest.raises(BlockedDestination, match=r"public\.example"):
            await f.get("http://public.example/image.png")
        with pytest.raises(BlockedDestination):
            await f.check_url("https://public.example/hook")
    finally:
        await f.aclose()


async def test_allowed_name_connects_to_the_checked_address_with_its_host_header(stub: Stub) -> None:
    resolver = fake_resolver({"receiver.test": ["127.0.0.1"]})
    f = fetcher(AddressPolicy.allowing(["receiver.test"]), resolver=resolver)
    try:
        fetched = await f.get(f"http://receiver.test:{stub.port}/ok")
    finally:
        await f.aclose()
    assert fetched.content == b"hello"
    [request] = stub.snapshot()
    assert request.headers["host"] == f"receiver.test:{stub.port}"
    assert resolver.calls == ["receiver.test"]  # resolved once, then that address was used


async def test_allowed_ip_and_network_entries(stub: Stub) -> None:
    for entry in ("127.0.0.1", "127.0.0.0/8"):
        f = fetcher(AddressPolicy.allowing([entry]))
        try:
            assert (await f.get(f"{stub.url}/ok")).content == b"hello"
        finally:
            await f.aclose()


async def test_redirect_to_loopback_is_refused(stub: Stub) -> None:
    resolver = fake_resolver({"receiver.test": ["127.0.0.1"], "localhost": ["::1", "127.0.0.1"]})
    f = fetcher(AddressPolicy.allowing(["receiver.test"]), resolver=resolver)
    try:
        for target in (f"http://127.0.0.1:{stub.port}/secret", f"http://localhost:{stub.port}/secret"):
            with pytest.raises(BlockedDestination):
                await f.get(f"http://receiver.test:{stub.port}/redirect-to/{target}")
        # An allowed hop is followed.
        allowed = f"http://receiver.test:{stub.port}/ok"
        assert (await f.get(f"http://receiver.test:{stub.port}/redirect-to/{allowed}")).content == b"hello"
    finally:
        await f.aclose()
    assert all(r.path != "/secret" for r in stub.snapshot())


async def test_redirect_to_another_scheme_is_refused(stub: Stub) -> None:
    f = fetcher(AddressPolicy.allowing(["127.0.0.1"]))
    try:
        with pytest.raises(BlockedDestination, match="http"):
            await f.get(f"{stub.url}/redirect-to/file:///etc/passwd")
    finally:
        await f.aclose()


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/x", "gopher://x", "not a url", "http://"]
)
async def test_only_http_urls(url: str) -> None:
    f = fetcher()
    try:
        with pytest.raises(BlockedDestination):
            await f.get(url)
    finally:
        await f.aclose()


@pytest.mark.parametrize("path", ["/big", "/big-chunked"])
async def test_byte_cap(stub: Stub, path: str) -> None:
    f = fetcher(AddressPolicy.allowing(["127.0.0.1"]), max_bytes=1 << 20)
    try:
        with pytest.raises(ResponseTooLarge):
            await f.get(f"{stub.url}{path}")
    finally:
        await f.aclose()


async def test_time_cap(stub: Stub) -> None:
    f = fetcher(AddressPolicy.allowing(["127.0.0.1"]), timeout_s=0.5)
    try:
        with pytest.raises(FetchFailed, match="longer than"):
            await f.get(f"{stub.url}/slow")
    finally:
        await f.aclose()


async def test_post_never_follows_redirects(stub: Stub) -> None:
    f = fetcher(AddressPolicy.allowing(["127.0.0.1"]))
    try:
        status = await f.post(f"{stub.url}/redirect-to/{stub.url}/ok", b"{}", {}, timeout_s=5)
    finally:
        await f.aclose()
    assert status == 302
    assert [r.path for r in stub.snapshot()] == [f"/redirect-to/{stub.url}/ok"]


async def test_unresolvable_name_fails_cleanly() -> None:
    f = fetcher(resolver=fake_resolver({}))
    try:
        with pytest.raises(FetchFailed, match="cannot be resolved"):
            await f.get("http://nowhere.invalid/x")
    finally:
        await f.aclose()
