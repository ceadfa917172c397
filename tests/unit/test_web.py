"""sockdoctor.web's web config file and basic auth (the server itself: tests/adversarial).
"""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import bcrypt
import pytest

from sockdoctor.errors import NotFoundError, UsageError
from sockdoctor.web import Source, auth, bind, load, serve

HASH = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()


def app(environ: dict, start_response) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok\n"]


def test_basic_auth_results_are_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = auth._bcrypt_ok
    monkeypatch.setattr(auth, "_bcrypt_ok", lambda p, h: calls.append(p) or real(p, h))
    checker = auth.Checker()
    users = {"prom": HASH.encode()}
    good = "Basic " + base64.b64encode(b"prom:pw").decode()
    assert all(checker.allowed(users, good) for _ in range(50))
    assert len(calls) == 1
    assert not checker.allowed(users, "Basic " + base64.b64encode(b"prom:no").decode())
    assert not checker.allowed(users, "Basic " + base64.b64encode(b"who:pw").decode())
    assert len(calls) == 3  # an unknown user costs a bcrypt too (no timing oracle)
    assert not checker.allowed(users, None) and not checker.allowed(users, "Basic !!")
    assert not checker.allowed({"prom": b"$2b$10$short"}, good)  # a broken hash: refused


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(("text", "error", "words"), [
    ("tls_server_config: [", UsageError, "not valid YAML"),
    ("- a list", UsageError, "expected a mapping"),
    ("http_server_config: {http2: true}", UsageError, "unknown key http_server_config"),
    ("basic_auth_users: {prom: plain-text}", UsageError, "must be a bcrypt hash"),
    ("tls_server_config: {cert_file: a.crt}", UsageError, "needs both cert_file and key_file"),
    ("tls_server_config: {cert_file: a.crt, key_file: a.key}", NotFoundError, "no such file"),
    ("tls_server_config: {cert_file: x, key_file: x, client_auth_type: RequireAnyClientCert}",
     UsageError, "without verifying"),
    ("tls_server_config: {cert_file: x, key_file: x, client_auth_type: Sometimes}",
     UsageError, "use one of NoClientCert"),
    ("tls_server_config: {cert_file: x, key_file: x, client_auth_type: "
     "RequireAndVerifyClientCert}", UsageError, "needs client_ca_file"),
    ("tls_server_config: {cert_file: x, key_file: x, min_version: TLS14}", UsageError,
     "min_version TLS14"),
    ("tls_server_config: {cert_file: x, key_file: x}", UsageError,
     "cannot use the certificate"),
])
def test_a_bad_web_config_is_one_sentence(tmp_path: Path, text: str, error: type,
                                          words: str) -> None:
    (tmp_path / "x").write_text("not a certificate")
    with pytest.raises(error) as caught:
        load(write(tmp_path / "web.yml", text))
    assert words in str(caught.value) and "\n" not in str(caught.value)
    assert str(tmp_path / "web.yml") in str(caught.value)


def test_a_missing_or_binary_file(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        load(str(tmp_path / "none.yml"))
    (tmp_path / "bin.yml").write_bytes(b"\xff\xfe")
    with pytest.raises(UsageError, match="not UTF-8"):
        load(str(tmp_path / "bin.yml"))
    assert load(write(tmp_path / "empty.yml", "")).ssl is None


def test_the_config_is_re_read_when_it_changes_and_a_bad_one_is_not_taken(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sockdoctor.web.config.RECHECK_S", 0.0)
    said: list[str] = []
    path = write(tmp_path / "web.yml", f"basic_auth_users: {{a: '{HASH}'}}\n")
    source = Source(path, said.append)
    assert set(source.current().users) == {"a"}
    write(tmp_path / "web.yml", f"basic_auth_users: {{b: '{HASH}'}}\n")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert set(source.current().users) == {"b"} and said[-1].startswith("web config reloaded")
    write(tmp_path / "web.yml", "basic_auth_users: [")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    assert set(source.current().users) == {"b"} and set(source.current().users) == {"b"}
    assert said[-1].startswith("web config not reloaded, the one in force stays")
    assert len(said) == 2  # said once, not on every request


def test_serve_binds_every_address_or_none(tmp_path: Path) -> None:
    taken = bind("127.0.0.1:0")
    try:
        port = taken.getsockname()[1]
        with pytest.raises(UsageError, match=r"cannot listen on 127\.0\.0\.1"):
            serve(["127.0.0.1:0", f"127.0.0.1:{port}"], app, None, print)
        with pytest.raises(UsageError, match=r"--web\.listen-address"):
            serve(["localhost:http"], app, None, print)
    finally:
        taken.close()
    web = serve(["127.0.0.1:0", "127.0.0.2:0"], app, None, print)
    try:
        assert [u.split(":")[1] for u in web.urls("/m")] == ["//127.0.0.1", "//127.0.0.2"]
    finally:
        web.stop()


def test_the_cli_names_every_optional_collector() -> None:
    from sockdoctor.cli.exporter import COLLECTORS as FLAGS
    from sockdoctor.watch.metrics import COLLECTORS

    assert set(COLLECTORS) == {*FLAGS, "doctor"}


def test_the_documented_web_config_is_accepted(tmp_path: Path) -> None:
    """docs/exporter.md's example: every key known; only its files are missing here."""
    import re

    doc = (Path(__file__).resolve().parents[2] / "docs" / "exporter.md").read_text()
    block = re.search(r"```yaml\n(# /etc/sockdoctor/web.yml.*?)```", doc, re.S)
    assert block is not None
    with pytest.raises(NotFoundError, match="cert_file"):
        load(write(tmp_path / "web.yml", block.group(1)))
    users = load(write(tmp_path / "users.yml", block.group(1).split("basic_auth_users:")[1]
                       .join(["basic_auth_users:", ""]))).users
    assert auth.Checker().allowed(users, "Basic " + base64.b64encode(
        b"prometheus:example").decode())
