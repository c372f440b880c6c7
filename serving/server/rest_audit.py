"""The REST side of the audit log: one line per HTTP request, with the status actually sent.

`AuditedApp` wraps the whole ASGI app (outside Starlette's error middleware), so it sees
every response the server sends: 200s, 400s, 401/403 from the token check, 404s of unknown
paths, 413, 429, 499 (client gone) and the 500 of an internal error. The routes add what
they know (token name, model, signature, version, instances, k, results, TF status code)
to the request's `audit_entry`; the status is read from the `http.response.start` message
itself. The health checks (HEALTH_PATHS) are not logged: balancers probe them every few
seconds.

The client's address is the socket's peer, unless a trusted proxy names the client
(`TrustedProxies`). By default `X-Forwarded-For` is ignored (any client can send one:
trusting it from loopback, uvicorn's default, let every local process write a forged
address into the audit log; the server starts uvicorn with `proxy_headers=False`). With `--trusted-proxy CIDR` (repeatable),
a request whose socket peer lies in one of those networks is attributed to the right-most
address of its `X-Forwarded-For` that is not itself a trusted proxy (the nearest hop that a
trusted proxy saw: addresses further left were written by the client and prove nothing).
"""
from __future__ import annotations

import ipaddress
import time
from typing import Optional, Sequence, Tuple

from serving.server.errors import HTTP_STATUS

AUDIT_SCOPE_KEY = "kdem.audit"
HEALTH_PATHS = frozenset({"/healthz", "/readyz"})
_CODE_OF_HTTP = {status: code for code, status in reversed(list(HTTP_STATUS.items()))}
_CODE_OF_HTTP.update({200: "OK", 403: "PERMISSION_DENIED", 405: "UNIMPLEMENTED", 413: "INVALID_ARGUMENT",
                      499: "CANCELLED"})
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


def audit_entry(request) -> dict:
    """The audit fields of a request (a Starlette Request or an ASGI scope); a throwaway dict outside AuditedApp."""
    scope = getattr(request, "scope", request)
    return scope.get(AUDIT_SCOPE_KEY, {})


def code_of_http(status: Optional[int]) -> str:
    if status is None:
        return "NO_RESPONSE"
    return _CODE_OF_HTTP.get(status, "INTERNAL" if status >= 500 else "INVALID_ARGUMENT")


def forwarded_for(scope) -> Optional[str]:
    values = [value.decode("latin-1") for key, value in scope.get("headers", ()) if key == b"x-forwarded-for"]
    return ",".join(values) or None


class AuditedApp:
    """ASGI middleware: one audit record per HTTP request but the health checks.

    Args:
        app: the ASGI app (serving.server.rest_app.create_app).
        audit: serving.server.audit.AuditLog or NoAudit.
        proxies: TrustedProxies (who may name the client in X-Forwarded-For).
    """

    def __init__(self, app, audit, proxies: TrustedProxies = TrustedProxies()):
        self.app = app
        self.audit = audit
        self.proxies = proxies

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") in HEALTH_PATHS:
            return await self.app(scope, receive, send)
        entry = scope[AUDIT_SCOPE_KEY] = {}
        start, sent = time.perf_counter(), {}

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.record(scope, entry, sent.get("status"), time.perf_counter() - start)

    def record(self, scope, entry: dict, http_status: Optional[int], seconds: float) -> None:
        peer = scope.get("client")
        client, proxy = self.proxies.client(peer[0] if peer else None, forwarded_for(scope))
        address = {"client": None if client is None else f"{client}:{peer[1]}" if proxy is None else client}
        if proxy is not None:
            address["proxy"] = f"{proxy}:{peer[1]}"
        status = entry.pop("status", None)
        if http_status is not None and (status is None or (http_status == 200) != (status == "OK")):
            status = code_of_http(http_status)  # what was sent wins over what a route meant to send
        self.audit.record(transport="rest", **address, method=scope.get("method"), path=scope.get("path"),
                          token_name=entry.pop("token_name", None), http_status=http_status,
                          status=status or code_of_http(http_status), latency_ms=round(seconds * 1000, 3), **entry)
