"""`--web.config.file`: exporter-toolkit's YAML (TLS and basic auth), checked and re-read.

The format every official Prometheus exporter reads:

    tls_server_config:
      cert_file: server.crt          # relative paths: from the file's directory
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # or NoClientCert, VerifyClientCertIfGiven
      client_ca_file: ca.crt
      min_version: TLS12             # TLS10..TLS13
    basic_auth_users:
      prometheus: $2y$10$...         # bcrypt hashes (htpasswd -nBC 10 "" | tr -d ':')

Python's TLS verifies every client certificate it asks for, so the two Go
policies that ask without verifying (RequestClientCert, RequireAnyClientCert)
are refused with a sentence rather than silently made stricter.
"""

from __future__ import annotations

import os
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import NotFoundError, UsageError

VERIFY_MODES = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
UNVERIFIED = ("RequestClientCert", "RequireAnyClientCert")
TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
TLS_KEYS = {"cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version",
            "max_version"}
TOP_KEYS = {"tls_server_config", "basic_auth_users"}
RECHECK_S = 1.0  # how often the files' mtimes are looked at, at most


@dataclass(frozen=True)
class WebConfig:
    """What one reading of the file says: a TLS context (or None) and the users."""

    ssl: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)  # name -> bcrypt hash
    files: tuple[str, ...] = ()  # every file it was made from, to notice a change


def load(path: str) -> WebConfig:
    """Read and check the file: UsageError (exit 2) for a bad one, NotFoundError (3)
    for a missing file, each in one sentence that names the file."""
    import yaml

    data = _read(path)
    try:
        doc = yaml.safe_load(data) if data.strip() else {}
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None)
        line = f" (line {where.line + 1}: {problem})" if where is not None and problem else ""
        raise _bad(path, f"not valid YAML{line}") from None
    if not isinstance(doc, dict):
        raise _bad(path, "expected a mapping with tls_server_config and basic_auth_users")
    _no_unknown(path, doc, TOP_KEYS, "")
    base = os.path.dirname(os.path.abspath(path))
    users = _users(path, doc.get("basic_auth_users"))
    tls = doc.get("tls_server_config")
    if tls is None:
        return WebConfig(None, users, (path,))
    context, files = _tls(path, base, tls)
    return WebConfig(context, users, (path, *files))


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read(1 << 20)
    except FileNotFoundError:
        raise NotFoundError(f"--web.config.file {path}: no such file") from None
    except OSError as exc:
        raise UsageError(f"--web.config.file {path}: cannot read it: "
                         f"{exc.strerror or exc}") from None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise _bad(path, "not UTF-8 text") from None


def _bad(path: str, why: str) -> UsageError:
    return UsageError(f"--web.config.file {path}: {why}")


def _no_unknown(path: str, doc: dict, known: set[str], prefix: str) -> None:
    unknown = sorted(str(k) for k in doc if k not in known)
    if unknown:
        raise _bad(path, f"unknown key {prefix}{unknown[0]} (known: "
                         f"{', '.join(sorted(known))})")


def _users(path: str, users: Any) -> dict[str, bytes]:
    if users is None:
        return {}
    if not isinstance(users, dict):
        raise _bad(path, "basic_auth_users must map user names to bcrypt hashes")
    out = {}
    for name, hashed in users.items():
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise _bad(path, f"basic_auth_users: the password of {str(name)!r} must be a "
                             "bcrypt hash ($2y$...)")
        out[str(name)] = hashed.encode()
    return out


def _tls(path: str, base: str, tls: Any) -> tuple[ssl.SSLContext, list[str]]:
    if not isinstance(tls, dict):
        raise _bad(path, "tls_server_config must be a mapping (cert_file, key_file...)")
    _no_unknown(path, tls, TLS_KEYS, "tls_server_config.")
    files = {k: os.path.join(base, str(tls[k])) for k in ("cert_file", "key_file",
                                                           "client_ca_file") if tls.get(k)}
    if "cert_file" not in files or "key_file" not in files:
        raise _bad(path, "tls_server_config needs both cert_file and key_file")
    auth = str(tls.get("client_auth_type") or "NoClientCert")
    mode = _verify_mode(path, auth, "client_ca_file" in files)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _version(path, tls, "min_version", ssl.TLSVersion.TLSv1_2)
    context.maximum_version = _version(path, tls, "max_version", ssl.TLSVersion.MAXIMUM_SUPPORTED)
    for key, name in files.items():
        if not os.path.exists(name):
            raise NotFoundError(f"--web.config.file {path}: {key} {name}: no such file")
    try:
        context.load_cert_chain(files["cert_file"], files["key_file"])
        if "client_ca_file" in files:
            context.load_verify_locations(files["client_ca_file"])
    except (ssl.SSLError, OSError) as exc:
        raise _bad(path, f"cannot use the certificate, key or CA ({_reason(exc)})") from None
    context.verify_mode = mode
    return context, list(files.values())


def _verify_mode(path: str, auth: str, has_ca: bool) -> ssl.VerifyMode:
    if auth in UNVERIFIED:
        raise _bad(path, f"client_auth_type {auth} asks for a client certificate without "
                         "verifying it, which sockdoctor does not do: use "
                         "VerifyClientCertIfGiven or RequireAndVerifyClientCert with "
                         "client_ca_file")
    if auth not in VERIFY_MODES:
        raise _bad(path, f"client_auth_type {auth}: use one of {', '.join(VERIFY_MODES)}")
    if auth != "NoClientCert" and not has_ca:
        raise _bad(path, f"client_auth_type {auth} needs client_ca_file")
    if auth == "NoClientCert" and has_ca:
        raise _bad(path, "client_ca_file is set but client_auth_type is NoClientCert: "
                         "say which client certificates to require")
    return VERIFY_MODES[auth]


def _version(path: str, tls: dict, key: str, default: ssl.TLSVersion) -> ssl.TLSVersion:
    text = tls.get(key)
    if text is None:
        return default
    if str(text) not in TLS_VERSIONS:
        raise _bad(path, f"{key} {text}: use one of {', '.join(TLS_VERSIONS)}")
    return TLS_VERSIONS[str(text)]


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return getattr(exc, "strerror", None) or str(exc)


def _stamp(files: tuple[str, ...]) -> tuple:
    out = []
    for name in files:
        try:
            st = os.stat(name)
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


class Source:
    """The web config in force: re-read when the file or a certificate changes.

    A check costs a few stat() calls and happens at most once a second; a
    new reading that fails keeps the one in force and says why once.
    """

    def __init__(self, path: str | None, say: Any = print) -> None:
        self.path, self.say = path, say
        self._lock = threading.Lock()
        self.config = load(path) if path else WebConfig()
        self._stamp = _stamp(self.config.files)
        self._checked = time.monotonic()
        self._failed: str | None = None
        self.reloads = 0

    def current(self) -> WebConfig:
        if self.path is None or time.monotonic() - self._checked < RECHECK_S:
            return self.config
        with self._lock:
            self._checked = time.monotonic()
            stamp = _stamp(self.config.files)
            if stamp != self._stamp:
                self._reload(stamp)
        return self.config

    def _reload(self, stamp: tuple) -> None:
        try:
            fresh = load(self.path)  # type: ignore[arg-type]
        except (UsageError, NotFoundError) as exc:
            if str(exc) != self._failed:
                self.say(f"web config not reloaded, the one in force stays: {exc}")
                self._failed = str(exc)
            return
        self.config, self._stamp, self._failed = fresh, _stamp(fresh.files), None
        self.reloads += 1
        self.say(f"web config reloaded from {self.path}")
