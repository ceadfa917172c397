"""The exporter behind TLS, client certificates and basic auth, scraped by a real Prometheus.

The test makes its own CA, server and client certificates (openssl CLI) and
a bcrypt hash, writes an exporter-toolkit web config, and checks: 401
without credentials, 200 with; no client certificate, no answer; a real
Prometheus with `tls_config` and `basic_auth` gets up == 1 (and a job
without credentials up == 0); a new certificate written in place is served
without a restart. Everything on loopback; the exporter samples only a
namespace made here.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import exporting
import pytest

from sockdoctor.lab.netlab import Lab

USER, PASSWORD = "prometheus", "s3cret-of-the-test"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_cert(d: Path, name: str, usage: str, cn: str | None = None) -> None:
    """name.key and name.crt, signed by d/ca.*, for 127.0.0.1."""
    (d / f"{name}.ext").write_text(f"subjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\n")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn or name}",
            cwd=d)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext",
            cwd=d)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj",
            "/CN=sockdoctor test CA", cwd=d)
    make_cert(d, "server", "serverAuth")
    make_cert(d, "client", "clientAuth")
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()
    (d / "web.yml").write_text(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"
        f"basic_auth_users:\n  {USER}: {hashed}\n")
    return d


def context(pki: Path, client_cert: bool = True) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if client_cert:
        ctx.load_cert_chain(str(pki / "client.crt"), str(pki / "client.key"))
    return ctx


def get(url: str, ctx: ssl.SSLContext | None, user: str = "", password: str = "") -> int:
    """The status of a GET; 0 when no HTTP answer came (a refused handshake)."""
    headers = {}
    if user:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=10, context=ctx) as reply:
            reply.read()
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ssl.SSLError):
        return 0


def served_certificate(url: str, pki: Path) -> bytes:
    host, port = urllib.parse.urlsplit(url).hostname, urllib.parse.urlsplit(url).port
    import socket

    with socket.create_connection((host, port), timeout=10) as raw, \
            context(pki).wrap_socket(raw, server_hostname=host) as tls:
        return tls.getpeercert(binary_form=True) or b""


@dataclass
class Scraper:
    api: str

    def up(self, job: str) -> tuple[float, str] | None:
        promql = 'up{job="' + job + '"}'
        url = f"{self.api}/query?{urllib.parse.urlencode({'query': promql})}"
        with urllib.request.urlopen(url, timeout=10) as reply:
            result = json.load(reply)["data"]["result"]
        return (float(result[0]["value"][0]), result[0]["value"][1]) if result else None

    def wait_up(self, job: str, want: str, after: float = 0.0, limit: float = 60) -> None:
        deadline = time.monotonic() + limit
        while (got := self.up(job)) is None or got[1] != want or got[0] <= after:
            assert time.monotonic() < deadline, f"up{{job={job}}}: {got}, wanted {want}"
            time.sleep(0.5)


@pytest.fixture(scope="module")
def secured(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    with Lab(f"tls{os.getpid() % 10000}", pair=False) as lab, \
            exporting.running("--netns", lab.server.netns, "--interval", "1s",
                              "--web.config.file", str(pki / "web.yml")) as exporter:
        target = exporter.base.removeprefix("https://")
        SERVED.add(int(target.rsplit(":", 1)[1]))
        workdir = tmp_path_factory.mktemp("prometheus-tls")
        tls = (f"{{ca_file: {pki / 'ca.crt'}, cert_file: {pki / 'client.crt'}, "
               f"key_file: {pki / 'client.key'}}}")
        config = ("global: {scrape_interval: 1s}\nscrape_configs:\n"
                  f"  - job_name: sockdoctor\n    scheme: https\n    tls_config: {tls}\n"
                  f"    basic_auth: {{username: {USER}, password: {PASSWORD}}}\n"
                  f"    static_configs: [{{targets: ['{target}']}}]\n"
                  f"  - job_name: no-credentials\n    scheme: https\n    tls_config: {tls}\n"
                  f"    static_configs: [{{targets: ['{target}']}}]\n")
        prometheus, api = exporting.run_prometheus(workdir, config)
        try:
            yield exporter, Scraper(api)
        finally:
            exporting.stop_prometheus(prometheus)


# Prometheus keeps its scrape connections open between scrapes (HTTP keep-alive):
# those to the exporter of this module are expected to outlive a test.
SERVED: set[int] = set()
pytestmark = [pytest.mark.root, pytest.mark.sockdoctor(
    allow=lambda leak: {leak.socket.local_port, leak.socket.peer_port} & SERVED)]


def test_basic_auth_401_without_credentials_200_with(secured: tuple, pki: Path) -> None:
    exporter, _ = secured
    assert exporter.url.startswith("https://127.0.0.1:")
    assert get(exporter.url, context(pki)) == 401
    assert get(exporter.url, context(pki), USER, "wrong") == 401
    assert get(exporter.url, context(pki), "nobody", PASSWORD) == 401
    assert get(exporter.url, context(pki), USER, PASSWORD) == 200
    assert get(exporter.base + "/healthz", context(pki), USER, PASSWORD) == 200


def test_a_client_certificate_is_required(secured: tuple, pki: Path) -> None:
    exporter, _ = secured
    assert get(exporter.url, context(pki, client_cert=False), USER, PASSWORD) == 0
    assert get(exporter.url.replace("https:", "http:"), None, USER, PASSWORD) != 200


def test_prometheus_scrapes_over_tls_with_basic_auth(secured: tuple) -> None:
    _, prometheus = secured
    prometheus.wait_up("sockdoctor", "1")
    prometheus.wait_up("no-credentials", "0")


def test_a_new_certificate_is_served_without_a_restart(secured: tuple, pki: Path) -> None:
    exporter, prometheus = secured
    before = served_certificate(exporter.url, pki)
    rotated = pki / "rotated"
    rotated.mkdir()
    for name in ("ca.crt", "ca.key"):
        (rotated / name).write_bytes((pki / name).read_bytes())
    make_cert(rotated, "server", "serverAuth", cn="rotated server")
    for name in ("server.key", "server.crt"):  # each replaced atomically, as a tool would
        os.replace(rotated / name, pki / name)
    changed_at = time.time()
    deadline = time.monotonic() + 15
    while (now := served_certificate(exporter.url, pki)) == before:
        assert time.monotonic() < deadline, "the old certificate is still served"
        time.sleep(0.3)
    assert now == ssl.PEM_cert_to_DER_cert((pki / "server.crt").read_text())
    prometheus.wait_up("sockdoctor", "1", after=changed_at + 1)
