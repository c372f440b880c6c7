"""Bearer tokens for both transports: a `name:token[:roles]` file, re-read when it changes; fails closed.

    # tokens.txt: one client a line; blank lines and `#` comments are ignored
    search-ui:3f1c9a7e5b2d4c6f8a0e:reader
    gallery-sync:77ab01cd23ef45aa67bb:writer
    ops:0c5e4d3b2a19f8e7d6c5:reader,writer
    batch-job:9a8b7c6d5e4f3a2b1c0d          (no roles: `reader`, see DEFAULT_ROLES)

REST sends `Authorization: Bearer TOKEN`, gRPC the `authorization` metadata with the same
value. A request is let in when its token equals one of the file's (compared with
`hmac.compare_digest` against every token, so the time taken does not say how much of a
token matched, nor which) and that token has the role the route needs (`reader` for every
route served today; `writer` for gallery writes): 401 / UNAUTHENTICATED without a valid
token, 403 / PERMISSION_DENIED without the role. The client is then known by the token's
*name*, the only thing that goes to the audit log. Tokens never appear in logs or error
messages, not even for a malformed line of the file (that error names the file and line).

The file **fails closed**: the tokens in force are exactly those of the file as it is now.
A file that is missing, unreadable, empty or malformed (a bad line, a token shorter than
MIN_TOKEN_CHARS, an unknown role) means that no token is valid until it is fixed; the log
says so once per change. Replace the file atomically (write a sibling, then rename) so that
a half-written file is never seen.
"""
from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import threading
from typing import Dict, FrozenSet, NamedTuple, Optional, Tuple

from serving.server.errors import ServingError, unauthenticated

log = logging.getLogger("serving")
MIN_TOKEN_CHARS = 16
READER, WRITER = "reader", "writer"
ROLES = (READER, WRITER)
DEFAULT_ROLES = frozenset({READER})  # a `name:token` line (the format before roles): every route served today


class TokenFileError(ValueError):
    """The tokens file is unreadable or has a malformed line (the message names file and line, never a token)."""


class Client(NamedTuple):
    token: bytes
    roles: FrozenSet[str]


def parse_roles(text: str, where: str) -> FrozenSet[str]:
    roles = frozenset(role.strip() for role in text.split(","))
    unknown = sorted(roles - set(ROLES))
    if unknown:
        raise TokenFileError(f"{where}: unknown role {unknown[0][:32]!r} (roles: {', '.join(ROLES)})")
    return roles


def parse_line(line: str, where: str) -> Tuple[str, Client]:
    """One `name:token[:roles]` line -> (name, Client); TokenFileError naming `where` (never the token)."""
    fields = [field.strip() for field in line.split(":")]
    if len(fields) not in (2, 3) or not all(fields):
        raise TokenFileError(f"{where}: expected 'name:token' or 'name:token:role[,role]' (no ':' inside a token)")
    name, token = fields[0], fields[1]
    if len(token) < MIN_TOKEN_CHARS:
        raise TokenFileError(f"{where}: token of {name!r} is shorter than {MIN_TOKEN_CHARS} characters")
    roles = parse_roles(fields[2], where) if len(fields) == 3 else DEFAULT_ROLES
    return name, Client(token.encode("utf-8"), roles)


def parse_tokens(path: str) -> Dict[str, Client]:
    """{name: Client} from a tokens file; TokenFileError naming `path:line` for a bad line, `path` when empty."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise TokenFileError(f"{path}: cannot read the tokens file: {type(e).__name__}") from None
    clients: Dict[str, Client] = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, client = parse_line(line, f"{path}:{number}")
        if name in clients:
            raise TokenFileError(f"{path}:{number}: name {name!r} given twice")
        clients[name] = client
    if not clients:
        raise TokenFileError(f"{path}: no 'name:token' line")
    return clients


class PermissionDenied(ServingError):
    """403 / PERMISSION_DENIED: a valid token without the role a route needs; `token_name` says whose."""

    def __init__(self, token_name: str, role: str):
        super().__init__("PERMISSION_DENIED", f"token {token_name!r} lacks the role {role!r}", 403)
        self.token_name = token_name


class TokenStore:
    """The tokens of a file, reloaded when its modification time, size or inode changes (checked per call).

    Fails closed: a file that cannot be read or parsed (missing, empty, a bad line) leaves no
    token valid; the error is logged once per change of the file.

    Args:
        path: the tokens file.
        must_load: raise TokenFileError when the file cannot be used now (the start-up check),
            instead of starting with no valid token.
    """

    def __init__(self, path: str, must_load: bool = True):
        self.path = path
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._clients: Dict[str, Client] = {}
        try:
            self._clients = parse_tokens(path)
        except TokenFileError as e:
            if must_load:
                raise
            self._report(e)

    def _stat(self) -> Optional[Tuple[int, ...]]:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_dev

    @staticmethod
    def _report(error: TokenFileError) -> None:
        log.error("%s; no token is valid until the file is fixed (fails closed)", error)

    def clients(self) -> Dict[str, Client]:
        stamp = self._stat()
        if stamp != self._stamp:
            with self._lock:
                if stamp != self._stamp:
                    self._stamp = stamp
                    try:
                        self._clients = parse_tokens(self.path)
                        log.info("tokens file %s reloaded: %d clients", self.path, len(self._clients))
                    except TokenFileError as e:
                        self._clients = {}
                        self._report(e)
        return self._clients

    def client_of(self, token: bytes) -> Optional[Tuple[str, Client]]:
        """(name, Client) of `token`, or None; every token is compared, in constant time each."""
        found = None
        for name, client in self.clients().items():
            if hmac.compare_digest(client.token, token):
                found = (name, client)
        return found

    def name_of(self, token: bytes) -> Optional[str]:
        found = self.client_of(token)
        return found[0] if found else None

    def check(self, authorization: Optional[str], role: str = READER) -> str:
        """An `Authorization` value -> the client's name; 401 without a valid token, 403 without `role`."""
        if not authorization:
            raise unauthenticated("missing credentials: send 'Authorization: Bearer <token>'")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthenticated("malformed credentials: expected 'Bearer <token>'")
        found = self.client_of(token.strip().encode("utf-8"))
        if found is None:
            raise unauthenticated("invalid token")
        name, client = found
        if role not in client.roles:
            raise PermissionDenied(name, role)
        return name


class OpenAccess:
    """No tokens configured: every request is let in, known as "anonymous"."""

    def check(self, authorization: Optional[str], role: str = READER) -> str:
        return "anonymous"


def is_loopback(host: str) -> bool:
    """Whether a bind address only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def refuse_open_bind(host: str, has_tokens: bool, allow_unauthenticated: bool) -> Optional[str]:
    """The one-line refusal when binding beyond loopback without tokens, else None."""
    if has_tokens or allow_unauthenticated or is_loopback(host):
        return None
    return (f"refusing to serve on {host} without --auth-tokens (anyone who can reach it could search the "
            f"gallery); pass --auth-tokens FILE, or --allow-unauthenticated behind your own access control")
