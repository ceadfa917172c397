"""HTTP basic auth against bcrypt hashes, with verified results remembered.

bcrypt is slow on purpose (~100 ms at cost 10); Prometheus sends the same
credentials every scrape, so a result is kept, keyed by a SHA-256 of user,
password and hash (a changed hash in the web config is a new key). An
unknown user is checked against a dummy hash, so timing does not tell
which user names exist.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
from collections import OrderedDict

CACHE_SIZE = 256
_DUMMY = b"$2b$10$" + b"." * 53  # a well-formed hash no password matches


class Checker:
    """`allowed(users, header)`: does an Authorization header name a user of `users`?

    `known()` answers from memory only (None: a bcrypt check is needed), so
    the server can answer remembered credentials at once and queue only the
    new ones behind the (bounded) bcrypt worker.
    """

    def __init__(self) -> None:
        self._known: OrderedDict[bytes, bool] = OrderedDict()
        self._lock = threading.Lock()

    def known(self, users: dict[str, bytes], header: str | None) -> bool | None:
        credentials = parse_basic(header)
        if credentials is None:
            return False
        with self._lock:
            key = _key(users, *credentials)
            found = self._known.get(key)
            if found is not None:
                self._known.move_to_end(key)
            return found

    def allowed(self, users: dict[str, bytes], header: str | None) -> bool:
        found = self.known(users, header)
        if found is not None:
            return found
        user, password = parse_basic(header)  # type: ignore[misc]  # known() parsed it
        hashed = users.get(user)
        ok = _bcrypt_ok(password, hashed or _DUMMY) and hashed is not None
        with self._lock:
            self._known[_key(users, user, password)] = ok
            while len(self._known) > CACHE_SIZE:
                self._known.popitem(last=False)
        return ok


def _key(users: dict[str, bytes], user: str, password: bytes) -> bytes:
    """A digest of user, password and the user's hash (a new hash is a new key)."""
    return hashlib.sha256(b"\0".join((user.encode(), password,
                                      users.get(user) or b"-"))).digest()


def parse_basic(header: str | None) -> tuple[str, bytes] | None:
    """`Basic base64(user:password)` -> (user, password); None for anything else."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = raw.partition(b":")
    if not sep:
        return None
    return user.decode("utf-8", "replace"), password


def _bcrypt_ok(password: bytes, hashed: bytes) -> bool:
    import bcrypt

    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # a malformed hash: refused, as a wrong password would be
        return False
