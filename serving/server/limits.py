"""Connection limits and timeouts of `serving.server` (issue #24 item 5), for both transports.

REST (uvicorn, h11):

- `TimedH11Protocol`: uvicorn's h11 protocol with read timeouts. A request's header block must
  arrive whole within `header_timeout_s` of the connection opening (or of the previous response):
  a client that sends half a header (slowloris) is disconnected then. While a body is read, each
  chunk must follow the previous one within `body_timeout_s`. uvicorn itself only times out idle
  keep-alive connections (`timeout_keep_alive`), never a request half-sent.
- `uvicorn_options`: `timeout_keep_alive` (idle keep-alive connections closed after
  `keep_alive_s`), `limit_concurrency` (beyond `max_connections` open connections or requests in
  flight, uvicorn answers 503 at once), the header size bound of h11 (`MAX_HEADER_BYTES`).

gRPC: `grpc_server_kwargs`: `maximum_concurrent_rpcs` (beyond it RESOURCE_EXHAUSTED at once),
connections idle for `keep_alive_s` (no RPC) closed.

Both: `within_deadline` bounds a request's work by `request_timeout_s` (gRPC: the client's deadline
when it is sooner): DEADLINE_EXCEEDED (HTTP 504) then, and the request leaves the batch queue.
"""
from __future__ import annotations

import asyncio
from typing import Optional

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from serving.server.errors import deadline_exceeded
from serving.server.settings import ServingLimits

MAX_HEADER_BYTES = 64 * 1024  # h11's bound on a request line + headers (431-like close beyond)


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header read timeout and a body (per chunk) read timeout.

    The two timeouts are class attributes, set by `timed_protocol` for one server.
    """

    header_timeout_s = ServingLimits.header_timeout_s
    body_timeout_s = ServingLimits.body_timeout_s

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.read_timer: Optional[asyncio.TimerHandle] = None
        super().connection_made(transport)
        self.arm_read_timer(self.header_timeout_s)

    def arm_read_timer(self, seconds: float) -> None:
        self.cancel_read_timer()
        self.read_timer = self.loop.call_later(seconds, self.read_timed_out)

    def cancel_read_timer(self) -> None:
        if self.read_timer is not None:
            self.read_timer.cancel()
            self.read_timer = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            self.arm_read_timer(self.body_timeout_s)  # the next chunk within body_timeout_s
        elif state is not h11.IDLE:
            self.cancel_read_timer()  # the request is read whole: now it is the server's turn
        # IDLE: the header block is still incomplete; its timer keeps running (no re-arming per byte)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self.arm_read_timer(self.header_timeout_s)  # the next request's headers, if any

    def connection_lost(self, exc) -> None:
        self.cancel_read_timer()
        super().connection_lost(exc)

    def read_timed_out(self) -> None:
        """The client sent a part of a request (or nothing) and then stalled: the connection is closed."""
        self.read_timer = None
        state = self.conn.their_state
        if self.transport.is_closing() or state not in (h11.IDLE, h11.SEND_BODY):
            return  # the request was read whole (e.g. a pipelined one): the server's turn, not a stall
        if state is h11.SEND_BODY and self.flow.read_paused:  # the server, not the client, stopped reading
            self.arm_read_timer(self.body_timeout_s)
            return
        self.transport.close()


def timed_protocol(limits: ServingLimits) -> type:
    """A `TimedH11Protocol` subclass with this server's timeouts (uvicorn's `http=` takes a class)."""
    return type("ServerH11Protocol", (TimedH11Protocol,), {"header_timeout_s": limits.header_timeout_s,
                                                           "body_timeout_s": limits.body_timeout_s})


def uvicorn_options(limits: ServingLimits) -> dict:
    """The keyword arguments of `uvicorn.Config` that bound connections and their timeouts."""
    return {"http": timed_protocol(limits), "timeout_keep_alive": limits.keep_alive_s,
            "limit_concurrency": limits.max_connections, "h11_max_incomplete_event_size": MAX_HEADER_BYTES}


def grpc_server_kwargs(limits: ServingLimits) -> dict:
    """Keyword arguments of `grpc.aio.server` (besides its message-size options): concurrent RPCs and
    connection lifetimes. gRPC has no slow-header problem: HTTP/2 frames are read by the core."""
    keep_alive_ms = int(limits.keep_alive_s * 1000)
    return {"maximum_concurrent_rpcs": limits.max_concurrent_rpcs,
            "options": [("grpc.max_connection_idle_ms", max(keep_alive_ms, 1000))]}


def deadline_seconds(limits: ServingLimits, client_remaining: Optional[float] = None) -> float:
    """A request's time budget: the server's `request_timeout_s`, or the client's deadline when sooner."""
    if client_remaining is None:
        return limits.request_timeout_s
    return max(0.0, min(limits.request_timeout_s, client_remaining))


async def within_deadline(work, seconds: float):
    """Awaits the coroutine `work` for at most `seconds`; DEADLINE_EXCEEDED (HTTP 504) beyond, and the
    work is cancelled (a request still queued leaves the batch queue uncomputed)."""
    try:
        return await asyncio.wait_for(work, seconds)
    except asyncio.TimeoutError:
        raise deadline_exceeded(f"request not answered within its deadline of {seconds:g} s "
                                f"(--request-timeout-s, or the client's deadline)") from None


CONNECTION_FLAGS = {  # ServingLimits field -> help of its flag (--header-timeout-s, ...)
    "header_timeout_s": "REST: a request's headers must arrive whole within this; else the connection closes",
    "body_timeout_s": "REST: most seconds between two chunks of a request body",
    "keep_alive_s": "idle keep-alive (REST) and idle gRPC connections are closed after this",
    "max_connections": "REST: open connections / requests in flight; beyond, 503 at once",
    "max_concurrent_rpcs": "gRPC: RPCs in flight; beyond, RESOURCE_EXHAUSTED at once",
    "request_timeout_s": "a request's deadline on both transports (DEADLINE_EXCEEDED / 504 beyond)",
}


def flag_of(field: str) -> str:
    return "--" + field.replace("_", "-")


def add_connection_flags(parser, limits: ServingLimits) -> None:
    """The CLI flags of CONNECTION_FLAGS (defaults and types from `ServingLimits`)."""
    for field, text in CONNECTION_FLAGS.items():
        default = getattr(limits, field)
        parser.add_argument(flag_of(field), type=type(default), default=default, help=text)


def connection_settings(args) -> dict:
    """{ServingLimits field: value} of the flags of `add_connection_flags` (for ServingLimits(...));
    a value that is not positive is refused naming its flag."""
    values = {field: getattr(args, field) for field in CONNECTION_FLAGS}
    for field, value in values.items():
        if not value > 0:
            raise ValueError(f"{flag_of(field)}: must be > 0, got {value}")
    return values
