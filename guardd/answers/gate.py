"""The nginx ``auth_request`` gate and the bypass cookie: pure decisions, no I/O.

Who passes while a scope is in maintenance: an exempt path, a client address in
an allowed network, or a signed, unexpired bypass cookie bound to the scope. The
HTTP responder extracts the headers and asks ``Gate.decide``; everything here is
deterministic given its inputs (time included), so it is tested without sockets.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from urllib.parse import unquote_to_bytes

from guardd.answers.cache import BoundedCache, V
from guardd.config.model import BypassConfig

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

COOKIE_NAME = "guardd_bypass"
BYPASS_PATH = b"/.guardd/bypass/"
# Domain separation: the operator's one secret yields independent keys for the
# cookie MAC and for hiding the secret's length when the URL is compared.
_COOKIE_KEY_LABEL = b"guardd bypass cookie key v1"
_URL_KEY_LABEL = b"guardd bypass url key v1"
_COOKIE_VERSION = "v1"
# A cookie may outlive its TTL by this much (a clock stepped back after it was
# issued); beyond that it was signed under a longer cookie_ttl, which a reload
# shortened: shortening the TTL shortens every cookie already out there.
CLOCK_SLACK = 60
# Remembered decisions per kind; a key longer than MAX_CACHED_KEY is never kept,
# so the caches stay small whatever clients send.
CACHE_SIZE = 4096
MAX_CACHED_KEY = 512
# At most this many bypass cookies are checked per request (duplicates with
# different paths are legitimate; hundreds of them are an attack on the CPU).
MAX_COOKIES_CHECKED = 4
# X-Forwarded-For hops examined from the right: a chain of trusted proxies
# longer than this is not a deployment, it is a crafted header.
MAX_FORWARDED_HOPS = 16

_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_COOKIE_VALUE = re.compile(
    rb"(?:^|;)[ \t]*"
    + re.escape(COOKIE_NAME.encode())
    + rb"=\"?([A-Za-z0-9._-]{1,200})\"?[ \t]*(?=;|$)"
)
# A decoded path segment that is a dot segment with parameters ("..;x"): Tomcat
# and others resolve it as "..", other servers do not. Ambiguous, so never exempt.
_DOT_WITH_PARAMS = re.compile(r"\.\.?;")


class Verdict(IntEnum):
    """The gate's answer for a request during maintenance, and why."""

    DENY = 0  # the maintenance page
    PATH = 1  # an exempt path (bypass.paths)
    ADDRESS = 2  # the client address is in bypass.cidrs
    COOKIE = 3  # a valid bypass cookie


# --------------------------------------------------------------------------- paths


def normalize_path(target: bytes) -> str | None:
    """The path of a request target as the SPEC resolves it, or None when even its
    segments are ambiguous (and the path must then never count as exempt).

    Drops the query, percent-decodes once, resolves dot segments (RFC 3986 5.2.4;
    ``..`` never climbs above ``/``, and an empty segment is a segment), *then*
    merges repeated slashes: ``/admin//../static/x`` is ``/admin/static/x``. None
    for: an encoded slash or backslash (``%2F``, ``%5C``: servers disagree whether
    they separate segments, so ``/static/..%2Fadmin`` could reach ``/admin``), a
    literal backslash, control characters (``%00``, ``%0A``: ``$`` in a pattern
    would match before a newline), a dot segment with parameters (``..;``), text
    that is not UTF-8, or a target that is not a path.
    """
    path = _decoded_path(target)
    if path is None:
        return None
    return _merge_slashes(remove_dot_segments(path))


def unambiguous_path(target: bytes) -> str | None:
    """normalize_path's answer when every server resolves the target alike; None when
    the order matters: merging slashes first (as nginx does) gives another path
    (``/admin//../static/x`` is ``/static/x`` there), so the target is ambiguous."""
    path = _decoded_path(target)
    if path is None:
        return None
    resolved = _merge_slashes(remove_dot_segments(path))
    if "//" in path and remove_dot_segments(_merge_slashes(path)) != resolved:
        return None
    return resolved


def _decoded_path(target: bytes) -> str | None:
    """The target's path, percent-decoded once; None where that is ambiguous."""
    if target[:1] != b"/":
        scheme, sep, rest = target.partition(b"://")
        if not sep or scheme.lower() not in (b"http", b"https"):
            return None
        slash = rest.find(b"/")
        target = rest[slash:] if slash >= 0 else b"/"
    for cut in (b"?", b"#"):
        index = target.find(cut)
        if index >= 0:
            target = target[:index]
    if b"%" in target:
        lowered = target.lower()
        if b"%2f" in lowered or b"%5c" in lowered:
            return None
        raw = unquote_to_bytes(target)
    else:
        raw = target
    try:
        path = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if "\\" in path or any(ch < " " or ch == "\x7f" for ch in path):
        return None
    if any(_DOT_WITH_PARAMS.match(segment) for segment in path.split("/")):
        return None
    return path


def remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4 on an absolute path, segment by segment: ``.`` goes, ``..``
    removes the segment before it (an empty one too); a final ``.`` or ``..`` leaves
    a trailing slash."""
    segments: list[str] = []
    parts = path.split("/")[1:]
    for index, segment in enumerate(parts):
        last = index == len(parts) - 1
        if segment == "..":
            if segments:
                segments.pop()
            if last:
                segments.append("")  # "/a/b/.." is the directory "/a/"
        elif segment == ".":
            if last:
                segments.append("")
        else:
            segments.append(segment)
    return "/" + "/".join(segments)


def _merge_slashes(path: str) -> str:
    while "//" in path:
        path = path.replace("//", "/")
    return path


# --------------------------------------------------------------------------- addresses


def parse_address(text: str | bytes) -> IPAddress | None:
    """An IP address from a peer name or a forwarded-header entry, or None.

    Accepts ``1.2.3.4``, ``1.2.3.4:80``, ``2001:db8::1``, ``[2001:db8::1]:80``;
    an IPv4-mapped IPv6 address (``::ffff:1.2.3.4``) is its IPv4 address, as
    dual-stack sockets report IPv4 clients.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            return None
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.partition(":")[0]  # IPv4 with a port
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_networks(texts: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Networks from config entries (an address is a /32 or /128); IPv4-mapped
    IPv6 networks become the IPv4 networks they map, matching ``parse_address``."""
    networks: list[IPNetwork] = []
    for text in texts:
        network = ipaddress.ip_network(text, strict=False)
        if (
            isinstance(network, ipaddress.IPv6Network)
            and network.prefixlen >= 96
            and network.subnet_of(_IPV4_MAPPED)
        ):
            network = ipaddress.IPv4Network(
                (int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96)
            )
        networks.append(network)
    return tuple(networks)


def in_networks(address: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    """True when ``address`` is in one of ``networks`` (other families never match)."""
    return any(address in network for network in networks)


def client_address(
    peer: IPAddress | None,
    *,
    forwarded_for: bytes | None,
    real_ip: bytes | None,
    trusted: tuple[IPNetwork, ...],
) -> IPAddress | None:
    """The client's address: the TCP peer's, unless the peer is a trusted proxy.

    Behind trusted proxies: the right-most ``X-Forwarded-For`` entry that is not
    a trusted proxy (entries further left are whatever the client claimed), else
    ``X-Real-IP``, else the peer. An unreadable entry where the client should be
    gives None: no address, so no address-based bypass (fail closed).
    """
    if peer is None or not trusted or not in_networks(peer, trusted):
        return peer  # headers from an untrusted peer are the client's own claims
    if forwarded_for:
        hops = forwarded_for.split(b",")
        for entry in reversed(hops[-MAX_FORWARDED_HOPS:]):
            address = parse_address(entry)
            if address is None:
                return None
            if not in_networks(address, trusted):
                return address
        if len(hops) > MAX_FORWARDED_HOPS:
            return None
    if real_ip:
        return parse_address(real_ip)
    return peer


# --------------------------------------------------------------------------- cookie


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes | None:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None


@dataclass(frozen=True)
class CookieSigner:
    """Signs and checks bypass cookies, and recognises the secret in the URL.

    The cookie value is ``v1.<scope>.<expiry>.<mac>``: readable, so an operator
    can see what a cookie is for, and useless without the key. The MAC is
    HMAC-SHA256 over version, scope and expiry, under a key derived from
    ``bypass.secret``: changing the secret revokes every cookie.
    """

    enabled: bool
    ttl: int
    cookie_key: bytes = field(repr=False)
    url_key: bytes = field(repr=False)
    url_digest: bytes = field(repr=False)

    @classmethod
    def from_secret(cls, secret: str | None, ttl: float) -> CookieSigner:
        """A signer for ``secret``; without one, a signer that never matches.

        Without a secret the same work is done against a random key, so that a
        wrong secret and "no secret configured" cannot be told apart.
        """
        material = secret.encode("utf-8") if secret is not None else secrets.token_bytes(32)
        url_key = hmac.digest(material, _URL_KEY_LABEL, hashlib.sha256)
        return cls(
            enabled=secret is not None,
            ttl=max(1, round(ttl)),
            cookie_key=hmac.digest(material, _COOKIE_KEY_LABEL, hashlib.sha256),
            url_key=url_key,
            url_digest=hmac.digest(url_key, material, hashlib.sha256),
        )

    def secret_matches(self, candidate: bytes) -> bool:
        """True when ``candidate`` (the percent-encoded URL tail) is the secret.

        Constant time: both sides are first reduced to keyed digests of equal
        length (so not even the secret's length leaks), then compared with
        ``hmac.compare_digest``.
        """
        digest = hmac.digest(self.url_key, unquote_to_bytes(candidate), hashlib.sha256)
        return hmac.compare_digest(digest, self.url_digest) and self.enabled

    def _mac(self, scope: str, expiry: int) -> bytes:
        message = f"{_COOKIE_VERSION}.{scope}.{expiry}".encode()
        return hmac.digest(self.cookie_key, message, hashlib.sha256)

    def sign(self, scope: str, *, now: float) -> str:
        """A cookie value for ``scope`` valid for ``ttl`` seconds from ``now``."""
        expiry = int(now) + self.ttl
        return f"{_COOKIE_VERSION}.{scope}.{expiry}.{_b64(self._mac(scope, expiry))}"

    def expiry(self, value: bytes, scope: str, *, now: float) -> int | None:
        """The expiry of a valid cookie for ``scope`` at ``now``, else None.

        Never raises: a tampered, expired, foreign-scope, foreign-key or
        malformed value is simply not valid.
        """
        if not self.enabled:
            return None
        try:
            text = value.decode("ascii")
        except UnicodeDecodeError:
            return None
        parts = text.split(".")
        if len(parts) != 4 or parts[0] != _COOKIE_VERSION or parts[1] != scope:
            return None
        expiry_text, mac_text = parts[2], parts[3]
        if not expiry_text.isdigit() or len(expiry_text) > 12 or expiry_text[0] == "0":
            return None
        expiry = int(expiry_text)
        if not now < expiry <= now + self.ttl + CLOCK_SLACK:
            return None
        mac = _unb64(mac_text)
        # Re-encoding must give back the same text: one MAC, one spelling.
        if mac is None or len(mac) != 32 or _b64(mac) != mac_text:
            return None
        if not hmac.compare_digest(mac, self._mac(scope, expiry)):
            return None
        return expiry

    def set_cookie(self, value: str, *, secure: bool) -> str:
        """The ``Set-Cookie`` header value for a bypass cookie."""
        attributes = [
            f"{COOKIE_NAME}={value}",
            f"Max-Age={self.ttl}",
            "Path=/",
            "HttpOnly",
            "SameSite=Lax",
        ]
        if secure:
            attributes.append("Secure")
        return "; ".join(attributes)


def cookie_values(header: bytes) -> list[bytes]:
    """The values of every ``guardd_bypass`` cookie in a Cookie header (a few at most)."""
    return [m.group(1) for m in _COOKIE_VALUE.finditer(header)][:MAX_COOKIES_CHECKED]


# --------------------------------------------------------------------------- the gate


@dataclass(frozen=True)
class GateRules:
    """``bypass:`` compiled once per config: patterns, networks, keys."""

    scope: str
    paths: tuple[re.Pattern[str], ...]
    cidrs: tuple[IPNetwork, ...]
    trusted_proxies: tuple[IPNetwork, ...]
    signer: CookieSigner
    secure_cookie: bool

    @classmethod
    def from_config(cls, bypass: BypassConfig, scope: str) -> GateRules:
        """Rules for ``scope`` from a validated ``bypass`` section."""
        return cls(
            scope=scope,
            paths=tuple(re.compile(pattern) for pattern in bypass.paths),
            cidrs=parse_networks(bypass.cidrs),
            trusted_proxies=parse_networks(bypass.trusted_proxies),
            signer=CookieSigner.from_secret(bypass.secret, bypass.cookie_ttl),
            secure_cookie=not bypass.insecure_cookie,
        )

    def path_exempt(self, original_uri: bytes) -> bool:
        """True when the original request's path matches one of ``paths`` from its start."""
        path = unambiguous_path(original_uri)
        return path is not None and any(pattern.match(path) for pattern in self.paths)

    def address_allowed(
        self, peer: str | None, forwarded_for: bytes | None, real_ip: bytes | None
    ) -> bool:
        """True when the client's address (see ``client_address``) is in ``cidrs``."""
        address = client_address(
            parse_address(peer) if peer is not None else None,
            forwarded_for=forwarded_for,
            real_ip=real_ip,
            trusted=self.trusted_proxies,
        )
        return address is not None and in_networks(address, self.cidrs)

    def bypass_cookie(self, now: float) -> str:
        """The ``Set-Cookie`` value a visitor of the secret URL gets at ``now``."""
        value = self.signer.sign(self.scope, now=now)
        return self.signer.set_cookie(value, secure=self.secure_cookie)


class Gate:
    """``GateRules`` with bounded memories of past decisions, for the hot path.

    During maintenance every request behind nginx asks the gate: the same static
    paths, the same few clients and the same cookies come back again and again.
    Replaced whole with the settings, so nothing outlives a reload.
    """

    def __init__(self, rules: GateRules) -> None:
        self.rules = rules
        self.path_cache: BoundedCache[bytes, bool] = BoundedCache(CACHE_SIZE)
        self.address_cache: BoundedCache[tuple[str | None, bytes | None, bytes | None], bool] = (
            BoundedCache(CACHE_SIZE)
        )
        # Only valid cookies are remembered, with their expiry (checked every time).
        self.cookie_cache: BoundedCache[bytes, int] = BoundedCache(CACHE_SIZE)

    def decide(
        self,
        *,
        original_uri: bytes | None,
        peer: str | None,
        forwarded_for: bytes | None,
        real_ip: bytes | None,
        cookie: bytes | None,
        now: float,
    ) -> Verdict:
        """Why the request passes during maintenance, or DENY. Cheapest checks first."""
        rules = self.rules
        if original_uri is not None and rules.paths:
            exempt = self.path_cache.get(original_uri)
            if exempt is None:
                exempt = rules.path_exempt(original_uri)
                _remember(self.path_cache, original_uri, exempt)
            if exempt:
                return Verdict.PATH
        if rules.cidrs:
            key = (peer, forwarded_for, real_ip)
            allowed = self.address_cache.get(key)
            if allowed is None:
                allowed = rules.address_allowed(peer, forwarded_for, real_ip)
                if len(forwarded_for or b"") + len(real_ip or b"") <= MAX_CACHED_KEY:
                    self.address_cache.put(key, allowed)
            if allowed:
                return Verdict.ADDRESS
        if cookie is not None and rules.signer.enabled:
            for value in cookie_values(cookie):
                expiry = self.cookie_cache.get(value)
                if expiry is None:
                    expiry = rules.signer.expiry(value, rules.scope, now=now)
                    if expiry is None:
                        continue
                    _remember(self.cookie_cache, value, expiry)
                if now < expiry:
                    return Verdict.COOKIE
        return Verdict.DENY


def _remember(cache: BoundedCache[bytes, V], key: bytes, value: V) -> None:
    if len(key) <= MAX_CACHED_KEY:
        cache.put(key, value)
