"""Client identity (SPEC §7): JWT sub, else the verified key's hash, else the IP; X-Forwarded-For only from proxies."""

from __future__ import annotations

import hashlib
import ipaddress
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from gateway.config import load_config
from gateway.edge.identity import MAX_HOPS, client_identity, identify, key_identity, parse_address
from gateway.keys import CLAIMS, FACTS, IDENTITY, Facts
from gateway.yamlsource import ConfigError

PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8:ffff::/48"))


def request(peer: str | None, *xff: str, headers: dict[str, str] | None = None) -> web.Request:
    all_headers = CIMultiDict(headers or {})
    for value in xff:
        all_headers.add("X-Forwarded-For", value)
    return make_mocked_request("GET", "/api/x", headers=all_headers).clone(remote=peer)


def ip_of(peer: str | None, *xff: str, trusted=PROXIES) -> str:
    return client_identity(request(peer, *xff), trusted)


# -- the IP, and when X-Forwarded-For is believed ---------------------------------------------------------------

def test_the_peer_is_the_client_without_trusted_proxies() -> None:
    assert ip_of("203.0.113.9", trusted=()) == "ip:203.0.113.9"
    assert ip_of("203.0.113.9", "198.51.100.7", trusted=()) == "ip:203.0.113.9"  # XFF ignored


@pytest.mark.parametrize("forged", ["198.51.100.7", "10.0.0.1", "127.0.0.1", "198.51.100.7, 10.0.0.1", "::1"])
def test_a_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored(forged: str) -> None:
    assert ip_of("203.0.113.9", forged) == "ip:203.0.113.9"


def test_the_rightmost_untrusted_hop_is_the_client() -> None:
    # 6.6.6.6 was written by the client itself; the trusted proxy 10.0.0.1 appended the address it saw
    assert ip_of("10.0.0.2", "6.6.6.6, 198.51.100.7, 10.0.0.1") == "ip:198.51.100.7"
    assert ip_of("10.0.0.2", "198.51.100.7") == "ip:198.51.100.7"


def test_several_forwarded_for_lines_read_as_one_list() -> None:
    assert ip_of("10.0.0.2", "6.6.6.6", "198.51.100.7, 10.0.0.9") == "ip:198.51.100.7"


def test_a_chain_of_trusted_hops_only_names_its_leftmost() -> None:
    assert ip_of("10.0.0.2", "10.0.0.5, 10.0.0.1") == "ip:10.0.0.5"


def test_a_trusted_peer_without_forwarded_for_is_the_client() -> None:
    assert ip_of("10.0.0.2") == "ip:10.0.0.2"


@pytest.mark.parametrize(("xff", "expected"), [
    ("198.51.100.7, garbage, 10.0.0.1", "ip:10.0.0.1"),  # left of garbage nothing is believed
    ("garbage", "ip:10.0.0.2"),
    ("", "ip:10.0.0.2"),
    (" , ", "ip:10.0.0.2"),
    ("unknown", "ip:10.0.0.2"),
    ("999.1.1.1", "ip:10.0.0.2"),
    ("1.2.3.4.5", "ip:10.0.0.2"),
    ("198.51.100.7/24", "ip:10.0.0.2"),
    ("198.51.100.7\x00", "ip:10.0.0.2"),
    ("[2001:db8::1", "ip:10.0.0.2"),
    ("2001:db8::1" + "0" * 80, "ip:10.0.0.2"),
    ("ﬀ.1.1.1", "ip:10.0.0.2"),
    ("198.51.100.7:4711", "ip:198.51.100.7"),  # a proxy that appends the port
    ("[2001:db8:1:2::7]:443", "ip:2001:db8:1:2::/64"),
])
def test_garbage_entries_are_never_believed(xff: str, expected: str) -> None:
    assert ip_of("10.0.0.2", xff) == expected


def test_a_huge_forwarded_for_is_read_only_from_the_right() -> None:
    # 10,000 forged entries, then the real client, then two trusted hops: only MAX_HOPS entries are looked at
    xff = ", ".join(["6.6.6.6"] * 10_000 + ["198.51.100.7", "10.0.0.3", "10.0.0.1"])
    assert ip_of("10.0.0.2", xff) == "ip:198.51.100.7"
    # past MAX_HOPS trusted hops the search stops at a trusted hop: never at an address the client wrote
    long_chain = ", ".join(["198.51.100.7"] + [f"10.0.0.{i}" for i in range(1, MAX_HOPS + 5)])
    assert MAX_HOPS == 16
    assert ip_of("10.0.0.2", long_chain) == "ip:10.0.0.5"  # the 16th entry from the right


def test_ipv6_clients_are_named_by_their_64() -> None:
    assert ip_of("2001:db8:1:2::5", trusted=()) == "ip:2001:db8:1:2::/64"
    assert ip_of("2001:db8:1:2:ffff:1:2:3", trusted=()) == ip_of("2001:db8:1:2::5", trusted=())
    assert ip_of("2001:db8:1:3::5", trusted=()) != ip_of("2001:db8:1:2::5", trusted=())


def test_ipv6_proxies_and_mapped_ipv4_peers() -> None:
    assert ip_of("2001:db8:ffff::1", "198.51.100.7") == "ip:198.51.100.7"
    assert ip_of("2001:db8:ffff::1", "2001:db8:1:2::9, 2001:db8:ffff::2") == "ip:2001:db8:1:2::/64"
    assert ip_of("::ffff:203.0.113.9", trusted=()) == "ip:203.0.113.9"  # a dual-stack socket's IPv4 peer
    assert ip_of("::ffff:10.0.0.2", "198.51.100.7") == "ip:198.51.100.7"  # ... and a trusted one
    assert ip_of("fe80::1%eth0", trusted=()) == "ip:fe80::/64"


def test_no_ip_peer_is_one_unknown_client() -> None:
    assert ip_of(None, trusted=()) == "ip:unknown"
    assert ip_of("/run/gateway.sock", "198.51.100.7") == "ip:unknown"


def test_parse_address_forms() -> None:
    assert str(parse_address(" 203.0.113.9 ")) == "203.0.113.9"
    assert str(parse_address("[2001:db8::1]")) == "2001:db8::1"
    assert parse_address("example.com") is None


# -- key and sub ------------------------------------------------------------------------------------------------

def test_a_verified_key_names_the_client_by_a_short_hash() -> None:
    key = "ck-live-CLIENTKEY-0123456789"
    identity = key_identity(key)
    assert identity == "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]
    assert key not in identity and key[:8] not in identity
    req = request("203.0.113.9")
    req[IDENTITY] = identity  # what authentication records once the key matched
    assert client_identity(req, ()) == identity


def test_an_unverified_key_names_nobody() -> None:
    # without a verified key, a client could send a new made-up key with every request and start a fresh budget
    req = request("203.0.113.9", headers={"X-API-Key": "made-up", "Authorization": "Bearer made-up-too"})
    assert client_identity(req, ()) == "ip:203.0.113.9"


def test_a_jwt_sub_comes_first() -> None:
    req = request("203.0.113.9")
    req[IDENTITY] = key_identity("ck-live-CLIENTKEY-0123456789")
    req[CLAIMS] = {"sub": "user-42"}
    assert client_identity(req, ()) == "sub:user-42"


@pytest.mark.parametrize("sub", ["x" * 129, "a\nb", "a\x00b", "tab\there"])
def test_a_long_or_unprintable_sub_is_hashed(sub: str) -> None:
    req = request("203.0.113.9")
    req[CLAIMS] = {"sub": sub}
    identity = client_identity(req, ())
    assert identity.startswith("sub:#") and len(identity) == 5 + 16


@pytest.mark.parametrize("claims", [{}, {"sub": ""}, {"sub": 42}, {"sub": None}, {"sub": ["a"]}])
def test_a_missing_or_odd_sub_falls_back(claims: dict) -> None:
    req = request("203.0.113.9")
    req[CLAIMS] = claims
    assert client_identity(req, ()) == "ip:203.0.113.9"


# -- the step ---------------------------------------------------------------------------------------------------

async def test_the_identify_step_records_the_client_for_later_steps() -> None:
    seen = []

    async def call_next(req: web.Request) -> web.StreamResponse:
        seen.append((req, req[IDENTITY]))
        return web.Response(text="ok")

    req = request("10.0.0.2", "198.51.100.7")
    req[FACTS] = Facts(route="/api/x")
    response = await identify(PROXIES)(req, call_next)
    assert response.text == "ok"
    assert seen == [(req, "ip:198.51.100.7")]
    assert req[FACTS].client == "ip:198.51.100.7"
    without_facts = request("203.0.113.9")
    await identify()(without_facts, call_next)
    assert without_facts[IDENTITY] == "ip:203.0.113.9"


@pytest.mark.parametrize(("peer", "expected"), [
    ("203.0.113.9", "ip:203.0.113.9"),
    ("2001:db8:1:2:3:4:5:6", "ip:2001:db8:1:2::/64"),
    ("::ffff:198.51.100.7", "ip:198.51.100.7"),
    (None, "ip:unknown"),
])
async def test_with_no_key_token_or_proxy_the_step_names_the_peer_as_the_general_one_does(peer, expected) -> None:
    """verified=False (no clients.api_keys, no clients.jwt) and no trusted proxy: the peer, by one cached lookup,
    named as client_identity names it; a forged X-Forwarded-For is ignored all the same."""
    async def call_next(req: web.Request) -> web.StreamResponse:
        return web.Response(text=req[IDENTITY])

    req = request(peer, "192.0.2.66")
    req[FACTS] = Facts(route="/api/x")
    response = await identify((), verified=False)(req, call_next)
    assert response.text == expected == client_identity(request(peer, "192.0.2.66"))
    assert req[FACTS].client == expected
    assert identify((), verified=False, enabled=False) is None


async def test_unobserved_the_step_names_the_client_and_leaves_the_facts_alone() -> None:
    """observed=False (no access log, no metrics): no Facts are looked for; the name is still set for the limits."""
    async def call_next(req: web.Request) -> web.StreamResponse:
        return web.Response(text=req[IDENTITY])

    req = request("203.0.113.9")
    req[FACTS] = Facts(route="/api/x")
    response = await identify((), verified=False, observed=False)(req, call_next)
    assert response.text == "ip:203.0.113.9" and req[FACTS].client is None


# -- server.trusted_proxies in config.yaml ----------------------------------------------------------------------

@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # problems name the file relative to the working directory
    return tmp_path


def _load(tmp_path: Path, text: str):
    (tmp_path / "config.yaml").write_text(text)
    return load_config(tmp_path / "config.yaml", environ={})


def test_trusted_proxies_load_as_networks(tmp_path: Path) -> None:
    config = _load(tmp_path, "server:\n  trusted_proxies: [10.0.0.0/8, 192.168.1.7, '2001:db8::/32', '::1']\n")
    assert [str(n) for n in config.server.trusted_proxies] == ["10.0.0.0/8", "192.168.1.7/32", "2001:db8::/32",
                                                                "::1/128"]
    assert _load(tmp_path, "server: {}\n").server.trusted_proxies == ()


def test_each_bad_trusted_proxy_is_one_line(in_tmp: Path) -> None:
    text = "server:\n  trusted_proxies:\n    - 10.0.0.1/8\n    - proxy.internal\n    - 0.0.0.0/0\n    - '::/0'\n" \
           "    - 10.0.0.0/33\n"
    with pytest.raises(ConfigError) as info:
        _load(in_tmp, text)
    assert [str(p) for p in info.value.problems] == [
        "config.yaml:3: server.trusted_proxies[0]: '10.0.0.1/8' has host bits set: write the network, 10.0.0.0/8",
        "config.yaml:4: server.trusted_proxies[1]: 'proxy.internal' is not an IP address or CIDR such as 10.0.0.0/8 "
        "or 2001:db8::/32",
        "config.yaml:5: server.trusted_proxies[2]: '0.0.0.0/0' trusts every address, so any client could choose its "
        "own identity: list only your proxies' addresses",
        "config.yaml:6: server.trusted_proxies[3]: '::/0' trusts every address, so any client could choose its own "
        "identity: list only your proxies' addresses",
        "config.yaml:7: server.trusted_proxies[4]: '10.0.0.0/33' is not an IP address or CIDR such as 10.0.0.0/8 "
        "or 2001:db8::/32",
    ]


def test_trusted_proxies_must_be_a_list(in_tmp: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _load(in_tmp, "server:\n  trusted_proxies: 10.0.0.0/8\n")
    assert [str(p) for p in info.value.problems] == [
        "config.yaml:2: server.trusted_proxies: expected a list of strings, got '10.0.0.0/8'",
    ]
