"""Bearer tokens for both transports: a `name:token` file, re-read when it changes.

    # tokens.txt: one client a line; blank lines and `#` comments are ignored
    search-ui:3f1c...e9
    batch-job:77ab...01

REST sends `Authorization: Bearer TOKEN`, gRPC the `authorization` metadata with the same
value. A request is let in when its token equals one of the file's (compared with
`hmac.compare_digest` against every token, so the time taken does not say how much of a
token matched, nor which); it is then known by the token's *name*, the only thing that
goes to the audit log. Tokens never appear in logs or error messages, not even for a
malformed line of the file (that error names the file and the line number only).
"""
from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import threading
from typing import Dict, Optional, Tuple

from serving.server.errors import unauthenticated

log = logging.getLogger("serving")


class TokenFileError(ValueError):
    """The tokens file is unreadable or has a malformed line (the message names file and line, never a token)."""


def parse_tokens(path: str) -> Dict[str, bytes]:
    """{name: token} from a tokens file; TokenFileError naming `path:line` for a bad line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise TokenFileError(f"{path}: cannot read the tokens file: {type(e).__name__}") from None
    tokens: Dict[str, bytes] = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, token = line.partition(":")
        name, token = name.strip(), token.strip()
        if not sep or not name or not token:
            raise TokenFileError(f"{path}:{number}: expected 'name:token'")
        if name in tokens:
            raise TokenFileError(f"{path}:{number}: name {name!r} given twice")
        tokens[name] = token.encode("utf-8")
    if not tokens:
        raise TokenFileError(f"{path}: no 'name:token' line")
    return tokens


class TokenStore:
    """The tokens of a file, reloaded when its modification time, size or inode changes.

    A change that makes the file unreadable or malformed is logged (once per change) and
    the previous tokens stay in force, so a half-edited file does not lock everyone out.

    Args:
        path: the tokens file.
    """

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._tokens = parse_tokens(path)
        self._stamp = self._stat()

    def _stat(self) -> Optional[Tuple[int, int, int]]:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def tokens(self) -> Dict[str, bytes]:
        stamp = self._stat()
        if stamp != self._stamp:
            with self._lock:
                if stamp != self._stamp:
                    self._stamp = stamp
                    try:
                        self._tokens = parse_tokens(self.path)
                        log.info("tokens file %s reloaded: %d clients", self.path, len(self._tokens))
                    except TokenFileError as e:
                        log.error("%s; keeping the previous tokens", e)
        return self._tokens

    def name_of(self, token: bytes) -> Optional[str]:
        """The name of `token`, or None; every token is compared, in constant time each."""
        found = None
        for name, known in self.tokens().items():
            if hmac.compare_digest(known, token):
                found = name
        return found

    def check(self, authorization: Optional[str]) -> str:
        """An `Authorization` value -> the client's name; UNAUTHENTICATED (401) otherwise."""
        if not authorization:
            raise unauthenticated("missing credentials: send 'Authorization: Bearer <token>'")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthenticated("malformed credentials: expected 'Bearer <token>'")
        name = self.name_of(token.strip().encode("utf-8"))
        if name is None:
            raise unauthenticated("invalid token")
        return name


class OpenAccess:
    """No tokens configured: every request is let in, known as "anonymous"."""

    def check(self, authorization: Optional[str]) -> str:
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
