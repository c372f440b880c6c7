"""Which address a request came from: the socket's peer, unless a trusted proxy names the client.

By default `X-Forwarded-For` is ignored (any client can send one: trusting it from loopback,
uvicorn's default, let every local process write a forged address into the audit log; the
server starts uvicorn with `proxy_headers=False`). With `--trusted-proxy CIDR` (repeatable),
a request whose socket peer lies in one of those networks is attributed to the right-most
address of its `X-Forwarded-For` that is not itself a trusted proxy (the nearest hop that a
trusted proxy saw: addresses further left were written by the client and prove nothing).
"""
from __future__ import annotations

import ipaddress
from typing import Optional, Sequence, Tuple

MAX_FORWARDED_HOPS = 32


def parse_networks(cidrs: Sequence[str]) -> Tuple:
    """CIDR strings -> networks; ValueError naming the bad one."""
    networks = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError:
            raise ValueError(f"--trusted-proxy {cidr[:64]!r}: not an address or CIDR network") from None
    return tuple(networks)


def _address(text: str):
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None


class TrustedProxies:
    """Resolves a request's client address.

    Args:
        cidrs: networks whose peers may name the client in `X-Forwarded-For` (none: never).
    """

    def __init__(self, cidrs: Sequence[str] = ()):
        self.networks = parse_networks(cidrs)

    def trusts(self, host: Optional[str]) -> bool:
        address = _address(host) if host else None
        return address is not None and any(address in network for network in self.networks)

    def client(self, peer_host: Optional[str], forwarded_for: Optional[str]) -> Tuple[Optional[str], Optional[str]]:
        """(client address, proxy address or None) for a socket peer and its `X-Forwarded-For` header."""
        if not forwarded_for or not self.trusts(peer_host):
            return peer_host, None
        hops = [hop.strip() for hop in forwarded_for.split(",")][-MAX_FORWARDED_HOPS:]
        for hop in reversed(hops):
            if not self.trusts(hop):
                return (hop if _address(hop) else f"invalid:{hop[:64]}"), peer_host
        return hops[0] if hops and _address(hops[0]) else peer_host, peer_host
