"""Running `sockdoctor exporter` in tests: start it, scrape it, stop it.

The exporter listens on loopback, on a port the kernel picks (`--listen
127.0.0.1:0`); it prints the URL it serves on its first line of stderr.
Every test samples only namespaces it made itself (`--netns NAME`). Also the
leaking server several exporter and sampler tests share.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from conftest import Remote
from sockdoctor.lab.netlab import Lab

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
Series = dict[tuple[tuple[str, str], ...], float]  # sorted label pairs -> value


@dataclass
class Running:
    """An exporter process and the URL of its /metrics."""

    proc: subprocess.Popen
    url: str
    stderr: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return "/".join(self.url.split("/")[:3])  # scheme://host:port

    def get(self, path: str = "/metrics") -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=10) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def scrape(self) -> dict[str, Series]:
        status, text = self.get()
        assert status == 200, text
        return parse(text)

    def wait_for(self, check: Callable[[dict[str, Series]], bool], limit: float = 30.0
                 ) -> dict[str, Series]:
        """Scrape until `check(metrics)` holds; returns those metrics."""
        deadline = time.monotonic() + limit
        while True:
            metrics = self.scrape()
            if check(metrics):
                return metrics
            if time.monotonic() > deadline:
                raise AssertionError(f"exporter never got there; last scrape: "
                                     f"{ {k: v for k, v in metrics.items() if 'close' in k} }")
            time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=30)
        finally:
            self.stderr += (self.proc.stderr.read() or "").splitlines()  # type: ignore[union-attr]


def start(*args: str, env: dict[str, str] | None = None, prefix: list[str] | None = None,
          timeout: float = 60.0) -> Running:
    """`sockdoctor exporter --listen 127.0.0.1:0 ARGS` until it says where it serves."""
    argv = [*(prefix or []), sys.executable, "-m", "sockdoctor", "exporter",
            "--listen", "127.0.0.1:0", *args]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 1.0)
        if not ready:
            continue
        line = proc.stderr.readline()  # type: ignore[union-attr]
        if not line:
            break
        lines.append(line.rstrip("\n"))
        found = re.search(r"https?://[^,\s]+", line)
        if found:
            return Running(proc, found.group(), lines)
    proc.kill()
    proc.wait()
    raise AssertionError(f"exporter did not start (exit {proc.returncode}): {lines}")


@contextmanager
def running(*args: str, stop_signal: int = signal.SIGTERM, **kw: object) -> Iterator[Running]:
    """start(); on the way out stop it with `stop_signal` and check that it exited 0."""
    exporter = start(*args, **kw)  # type: ignore[arg-type]
    try:
        yield exporter
    except BaseException:
        kill_group(exporter.proc)
        raise
    code = exporter.stop(stop_signal)
    assert code == 0, f"exit {code}: {exporter.stderr}"


def keeping_server(lab: Lab, port: int, comm: str = "sdt-leaker") -> Remote:
    """A program in the lab's server namespace listening on `port`: `conns` keeps
    whatever it accepts, so the connections its clients close stay in CLOSE-WAIT."""
    server = Remote(lab, lab.server, comm)
    server(f"""
        lst = socket.socket()
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind(("0.0.0.0", {port}))
        lst.listen(64)
        conns = []
    """)
    return server


def parse(text: str) -> dict[str, Series]:
    """Exposition text -> {sample name: {labels: value}} (counters keep their _total)."""
    out: dict[str, Series] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def pick(series: Series, **labels: str) -> Series:
    """The series whose labels include all of `labels`."""
    want = set(labels.items())
    return {k: v for k, v in series.items() if want <= set(k)}


def value(series: Series, **labels: str) -> float | None:
    found = pick(series, **labels)
    assert len(found) <= 1, found
    return next(iter(found.values()), None)


def run_prometheus(workdir: Path, config: str) -> tuple[subprocess.Popen, str]:
    """A real Prometheus with this configuration, on a free loopback port, its data
    in `workdir`; (process, http://127.0.0.1:PORT/api/v1) once it is ready."""
    (workdir / "prometheus.yml").write_text(config)
    for _attempt in range(5):  # the port may be taken between finding it and binding it
        port = free_port()
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2):
                    return proc, f"http://127.0.0.1:{port}/api/v1"
            except OSError:
                time.sleep(0.2)
        stop_prometheus(proc)
    raise AssertionError("Prometheus did not start")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_prometheus(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


def kill_group(proc: subprocess.Popen) -> None:
    """Last resort in a finally: the exporter and whatever it forked."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
