"""The doctor on a real SQL pool: SQLAlchemy over psycopg against PostgreSQL.

The server (PostgreSQL with idle_session_timeout = 1s, in the lab's server
namespace) closes the pool's idle connections; SQLAlchemy's pool keeps them
in CLOSE-WAIT. The report names Python, SQLAlchemy and psycopg, and gives
SQLAlchemy's own fix (pool_pre_ping, pool_recycle) first.
"""

from __future__ import annotations

import glob
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_doctor_runtimes import client_finding, run_client

from sockdoctor.lab.netlab import CLIENT_V4, SERVER_V4, Lab

pytestmark = pytest.mark.root

HERE = Path(__file__).parent / "runtimes"
RUNAS = ["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups"]


def pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.skip("PostgreSQL is not installed (.ci/run installs it)")
    return Path(found[-1]).parent


@pytest.fixture
def postgres(lab: Lab, request: pytest.FixtureRequest) -> Iterator[str]:
    """A PostgreSQL server in the lab's server namespace; its URL for the client."""
    pytest.importorskip("sqlalchemy")
    pytest.importorskip("psycopg")
    bindir = pg_bin()
    data = Path(tempfile.mkdtemp(prefix="sdt-pg-"))  # pytest's tmp_path is root's alone
    shutil.chown(data, "postgres", "postgres")
    request.addfinalizer(lambda: shutil.rmtree(data, ignore_errors=True))
    subprocess.run([*RUNAS, str(bindir / "initdb"), "-D", str(data), "-A", "trust",
                    "-U", "postgres"], check=True, capture_output=True, timeout=120,
                   cwd=data)
    with open(data / "pg_hba.conf", "a") as hba:  # the lab's client network, no password
        hba.write(f"host all all {CLIENT_V4}/32 trust\n")
    server = lab.spawn(lab.server, [*RUNAS, str(bindir / "postgres"), "-D", str(data),
                                    "-k", str(data), "-h", SERVER_V4, "-c",
                                    "idle_session_timeout=1s", "-c", "fsync=off"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=data)
    deadline = time.monotonic() + 60
    while subprocess.run(["ip", "netns", "exec", lab.server.netns, str(bindir / "pg_isready"),
                          "-h", SERVER_V4, "-q"]).returncode != 0:
        assert time.monotonic() < deadline and server.poll() is None, "postgres did not start"
        time.sleep(0.3)
    yield f"postgresql+psycopg://postgres@{SERVER_V4}:5432/postgres"
    server.terminate()
    server.wait(timeout=30)


def test_sqlalchemy_pool_gets_its_own_fix(lab: Lab, postgres: str, tmp_path: Path) -> None:
    client = run_client(lab, [sys.executable, str(HERE / "sqlalchemy_pool.py"), postgres],
                        tmp_path)
    f = client_finding(lab, client.pid, at_least=3)
    assert f.evidence["service"] == "PostgreSQL"
    runtime = f.evidence["runtime"]
    assert runtime.startswith("Python ") and "SQLAlchemy" in runtime and "psycopg" in runtime
    assert f.fix.startswith("SQLAlchemy: create_engine(url, pool_pre_ping=True")
    assert "HikariCP" not in f.fix
