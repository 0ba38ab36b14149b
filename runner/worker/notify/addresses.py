"""Where a completion callback may go: the rule checked on the address a callback actually
connects to (runner/worker/notify/http.py), and at submission on a host written as an address.

A callback URL is the job submitter's, so the worker would otherwise POST wherever they point
it: its own metrics port, the cloud's metadata service, a database on the private network. A
callback may reach only a public (globally routable, unicast) address. Refused: loopback,
link-local (169.254.0.0/16 and fe80::/10: where clouds serve instance metadata), private
(10/8, 172.16/12, 192.168/16), shared (100.64/10), unique-local (fc00::/7), multicast,
unspecified, reserved and documentation ranges (IANA's special-purpose registries, as
Python's `ipaddress` knows them), the IETF protocol block 192.0.0.0/24 (Oracle's metadata is
192.0.0.192), and IPv6 forms that carry an IPv4 address (mapped, compatible, NAT64, 6to4),
judged by that IPv4 address. `callbacks.allowed_networks` lets chosen ranges through, and a
host named exactly (no wildcard) in `callbacks.allowed_hosts` may be on any address.

Commit statuses go to the API URLs the operator configured (statuses.*.api_url), which are
trusted: these rules are for callbacks only.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT; Alibaba Cloud's metadata is 100.100.100.200
#: public by Python's reckoning, but IANA's protocol assignments (Oracle Cloud's metadata is 192.0.0.192)
_PROTOCOL_ASSIGNMENTS = ipaddress.ip_network("192.0.0.0/24")
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # the well-known prefix; its last 32 bits are the IPv4 address
_BRACKETED = re.compile(r"^\[[0-9a-f:.]+\](?::[0-9]+)?$", re.I)  # an IPv6 address as URLs write it, not a glob
#: IPv4 written as the C library reads it: 0x7f000001, 2130706433, 0177.0.0.1, 127.1
_LEGACY_IPV4 = re.compile(r"^(?:0x[0-9a-f]+|[0-9]+)(?:\.(?:0x[0-9a-f]+|[0-9]+)){0,3}$", re.I)


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, NAT64, 6to4), if any."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (int(address) >> 32 == 0 and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)  # NAT64, or ::a.b.c.d (IPv4-compatible)
    return None


def kind(address: IPAddress) -> str | None:
    """What makes `address` no place for a callback ("loopback", "link-local", ...), or None
    if it is public."""
    inner = embedded_ipv4(address)
    if inner is not None:
        why = kind(inner)
        return f"{why} (IPv4 {inner} inside IPv6)" if why else None
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local (where clouds serve instance metadata)"
    if address.is_multicast:
        return "multicast"
    if address.is_unspecified:
        return "unspecified"
    if isinstance(address, ipaddress.IPv6Address):
        if address in _UNIQUE_LOCAL:
            return "unique-local"
        if address.is_site_local:
            return "site-local"
    elif address in _SHARED:
        return "shared (carrier-grade NAT)"
    elif address in _PROTOCOL_ASSIGNMENTS:
        return "in IANA's protocol assignments (192.0.0.0/24)"
    if address.is_reserved:
        return "reserved"
    if address.is_private:
        return "private"
    if not address.is_global:
        return "not globally routable"
    return None


@dataclass(frozen=True)
class AddressRule:
    """The addresses one callback may connect to: public ones, and those in `allowed` networks."""

    allowed: tuple[IPNetwork, ...] = ()

    def refusal(self, address: IPAddress) -> str | None:
        """Why a callback may not connect to `address`, or None if it may."""
        inner = embedded_ipv4(address)
        if any(address in net or (inner is not None and inner in net) for net in self.allowed):
            return None
        why = kind(address)
        return f"{address} is {why}" if why else None


def rule_for(host: str, port: int | None, allowed_hosts: Iterable[str] | None,
             allowed_networks: Iterable[IPNetwork]) -> AddressRule | None:
    """The address rule for a callback to `host` (a URL's host, `port` if the URL names one),
    or None when the operator named that host exactly in callbacks.allowed_hosts (trusted: any
    address). A pattern with a wildcard filters names only: its hosts keep the rule."""
    names = host_names(host, port)
    for entry in allowed_hosts or ():
        if is_exact(entry) and entry.lower() in names:
            return None
    return AddressRule(tuple(allowed_networks))


def host_names(host: str, port: int | None) -> list[str]:
    """How an allowed_hosts entry may name a URL's host: name, name:port (IPv6 also in brackets)."""
    host = host.lower()
    shown = f"[{host}]" if ":" in host else host
    return list(dict.fromkeys([host, shown] + ([f"{host}:{port}", f"{shown}:{port}"] if port else [])))


def is_exact(entry: str) -> bool:
    """Is an allowed_hosts entry a host's name (not a pattern with * ? or [...])?"""
    return not any(c in entry for c in "*?") and ("[" not in entry or bool(_BRACKETED.match(entry)))


def literal_address(host: str) -> IPAddress | None:
    """The address a URL's host stands for without asking DNS: an IP address in any form the
    C library accepts (0x7f000001, 2130706433, 0177.0.0.1, 127.1, [::1]), and localhost."""
    host = host.strip("[]").rstrip(".").lower()
    try:
        return ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        pass
    if _LEGACY_IPV4.match(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    if host == "localhost" or host.endswith(".localhost"):
        return ipaddress.IPv4Address("127.0.0.1")
    return None
