"""Which runtime and libraries a process runs, from what the kernel shows.

Nothing here attaches to or stops the process: the executable
(/proc/PID/exe), its mappings (/proc/PID/maps), its thread names
(/proc/PID/task/*/comm), its command line, its open files and the source of
its main script are read as files. The doctor then gives the fix for that
runtime and library first, instead of every pool's knobs.

Signals, by runtime:
- Go: the ELF's .go.buildinfo section (Go >= 1.18 keeps the version and the
  module list inline there) and, for standard-library packages (which are not
  modules), their function names in the binary's symbol table.
- Java: libjvm.so in the mappings; libraries from the jar files it holds open
  and from its thread names (HikariPool-1 housekeeper, OkHttp TaskRunner ...).
- Python: libpython or a python3.X executable; libraries from the native
  extensions mapped in site-packages and the imports of the main script.
- Node.js: the node executable; libraries from the main script's require()
  and import statements.
"""

from __future__ import annotations

import ast
import mmap
import os
import re
from collections.abc import Callable
from functools import lru_cache

from ..model import Runtime
from . import procfs

# Go standard-library packages that matter here, by a function only their users link.
_GO_STD_MARKERS = (
    (b"net/http.(*Transport).roundTrip", "net/http client"),
    (b"net/http.(*Server).Serve", "net/http server"),
    (b"database/sql.(*DB).conn", "database/sql"),
)
# Go modules worth naming (prefix of the module path -> what to call it).
_GO_MODULES = (
    ("github.com/jackc/pgx", "pgx"), ("github.com/lib/pq", "lib/pq"),
    ("github.com/go-sql-driver/mysql", "go-sql-driver/mysql"),
    ("github.com/redis/go-redis", "go-redis"), ("github.com/go-redis/redis", "go-redis"),
    ("google.golang.org/grpc", "grpc-go"), ("github.com/valyala/fasthttp", "fasthttp"),
    ("gorm.io/gorm", "GORM"),
)
# Java: thread-name prefixes and jar-name prefixes -> library.
_JAVA_THREADS = (("HikariPool", "HikariCP"), ("OkHttp", "OkHttp"), ("lettuce-", "Lettuce"),
                 ("HttpClient-", "java.net.http"), ("Connection evictor", "Apache HttpClient"),
                 ("mysql-cj-abandoned", "MySQL Connector/J"), ("jedis", "Jedis"))
_JAVA_JARS = (("HikariCP", "HikariCP"), ("hikaricp", "HikariCP"), ("okhttp", "OkHttp"),
              ("httpclient", "Apache HttpClient"), ("postgresql", "PostgreSQL JDBC"),
              ("mysql-connector", "MySQL Connector/J"), ("mariadb-java-client", "MariaDB JDBC"),
              ("jedis", "Jedis"), ("lettuce", "Lettuce"), ("commons-dbcp", "DBCP"),
              ("tomcat-jdbc", "Tomcat JDBC pool"))
# Python: imported module (or a native extension's package) -> library.
_PY_LIBS = {"requests": "requests", "urllib3": "urllib3", "httpx": "httpx",
            "aiohttp": "aiohttp", "sqlalchemy": "SQLAlchemy", "psycopg": "psycopg",
            "psycopg2": "psycopg2", "psycopg_pool": "psycopg_pool", "pymysql": "PyMySQL",
            "redis": "redis-py", "pymemcache": "pymemcache", "grpc": "grpcio",
            "asyncpg": "asyncpg", "psycopg_binary": "psycopg", "psycopg_c": "psycopg"}
# Node.js: required module -> library.
_NODE_LIBS = {"http": "http", "https": "https", "node:http": "http", "node:https": "https",
              "axios": "axios", "node-fetch": "node-fetch", "undici": "undici", "pg": "pg",
              "mysql2": "mysql2", "mysql": "mysql", "ioredis": "ioredis", "redis": "node-redis",
              "agentkeepalive": "agentkeepalive", "got": "got"}
# Programs whose name says more than their runtime.
_PROGRAMS = ("gunicorn", "uwsgi", "celery", "uvicorn", "hypercorn", "daphne", "php-fpm",
             "nginx", "haproxy", "envoy", "redis-server", "memcached", "mysqld", "mariadbd",
             "postgres", "java", "tomcat", "jetty")
_PYTHON_EXE = re.compile(r"python(\d+(?:\.\d+)?)?$")
_LIBPYTHON = re.compile(r"libpython(\d+\.\d+)")
_JVM_VERSION = re.compile(r"/(?:java|jdk|jre)-?(\d+)")
_SITE_EXT = re.compile(r"(?:site|dist)-packages/([A-Za-z_][A-Za-z0-9_]*)/")
_NODE_REQUIRE = re.compile(r"""(?:require\(\s*|from\s+|import\s+)['"]([@\w./:-]+)['"]""")
SCRIPT_MAX = 1 << 20  # main scripts larger than this are not read
_BUILDINFO_MAGIC = b"\xff Go buildinf:"


def runtime_of(pid: int) -> Runtime | None:
    """The runtime of a process, or None if it is gone or unreadable."""
    base = f"{procfs.PROC}/{pid}"
    try:
        exe = os.readlink(f"{base}/exe")
    except OSError:
        return None
    maps = _mapped_paths(pid)
    cmdline = _cmdline(pid)
    program = _program(exe, cmdline)
    name = os.path.basename(exe.removesuffix(" (deleted)"))
    if any(p.endswith("/libjvm.so") for p in maps):
        return _java(pid, maps, program)
    py = _PYTHON_EXE.match(name)
    libpy = next((m for p in maps if (m := _LIBPYTHON.search(p))), None)
    if py or libpy:
        version = libpy.group(1) if libpy else (py.group(1) or "") if py else ""
        libs = _python_libs(pid, maps, cmdline)
        return Runtime(kind="python", version=version, libraries=libs, program=program)
    if name in ("node", "nodejs"):
        return Runtime(kind="node", libraries=_node_libs(pid, cmdline), program=program)
    go = _go_info(pid)
    if go is not None:
        version, libs = go
        return Runtime(kind="go", version=version, libraries=libs, program=program)
    return Runtime(kind="native", program=program or name)


# --- per runtime -------------------------------------------------------------

def _java(pid: int, maps: set[str], program: str) -> Runtime:
    version = next((m.group(1) for p in maps if p.endswith("/libjvm.so")
                    and (m := _JVM_VERSION.search(p))), "")
    libs: list[str] = []
    for name in _thread_names(pid):
        _add_first(libs, name, _JAVA_THREADS)
    for path in _open_files(pid, ".jar"):
        _add_first(libs, os.path.basename(path), _JAVA_JARS)
    return Runtime(kind="java", version=version, libraries=libs, program=program)


def _python_libs(pid: int, maps: set[str], cmdline: list[str]) -> list[str]:
    libs: list[str] = []
    for path in sorted(maps):
        m = _SITE_EXT.search(path)
        if m and m.group(1) in _PY_LIBS:
            _add(libs, _PY_LIBS[m.group(1)])
    for module in _python_imports(pid, cmdline):
        if module in _PY_LIBS:
            _add(libs, _PY_LIBS[module])
    return libs


def _python_imports(pid: int, cmdline: list[str]) -> list[str]:
    """Top-level modules the main script imports (python SCRIPT ...)."""
    script = next((a for a in cmdline[1:] if a.endswith(".py")), "")
    source = _read_script(pid, script)
    if not source:
        return []
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append(node.module.split(".")[0])
    return out


def _node_libs(pid: int, cmdline: list[str]) -> list[str]:
    script = next((a for a in cmdline[1:] if not a.startswith("-")), "")
    source = _read_script(pid, script)
    libs: list[str] = []
    for module in _NODE_REQUIRE.findall(source):
        if module in _NODE_LIBS:
            _add(libs, _NODE_LIBS[module])
    return libs


def _go_info(pid: int) -> tuple[str, list[str]] | None:
    """(Go version, libraries) of a Go executable, or None if it is not one."""
    try:
        st = os.stat(f"{procfs.PROC}/{pid}/exe")
        return _go_binary(f"{procfs.PROC}/{pid}/exe", st.st_dev, st.st_ino, st.st_mtime_ns)
    except OSError:
        return None


@lru_cache(maxsize=256)
def _go_binary(path: str, dev: int, ino: int, mtime: int) -> tuple[str, list[str]] | None:
    """Read once per executable file (dev, inode, mtime): many processes share one."""
    del dev, ino, mtime  # the cache key: the same file, unchanged
    with open(path, "rb") as f:
        if f.read(4) != b"\x7fELF":
            return None
        try:
            data = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        except (ValueError, OSError):
            return None
    with data:
        at = data.find(_BUILDINFO_MAGIC)
        if at < 0:
            return None
        version, modinfo = _buildinfo_strings(data, at)
        libs = [label for marker, label in _GO_STD_MARKERS if data.find(marker) >= 0]
    for line in modinfo.splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[0] == "dep":
            _add_first(libs, parts[1], _GO_MODULES)
    return version, libs


def _buildinfo_strings(data: mmap.mmap, at: int) -> tuple[str, str]:
    """Version and module info of a Go >= 1.18 buildinfo header (inline strings).

    The 32-byte header is the magic, the pointer size and a flags byte (bit 1:
    strings follow inline, each a uvarint length then its bytes). Older Go
    versions store pointers instead: the version is then left empty.
    """
    flags = data[at + 15]
    if not flags & 2:
        return "", ""
    pos = at + 32
    out = []
    for _ in range(2):
        length, pos = _uvarint(data, pos)
        if length > 1 << 20:
            return "", ""
        out.append(data[pos:pos + length].decode("utf-8", "replace"))
        pos += length
    return out[0], out[1]


def _uvarint(data: mmap.mmap, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
    return value, pos


# --- /proc reads -------------------------------------------------------------

def _mapped_paths(pid: int) -> set[str]:
    try:
        with open(f"{procfs.PROC}/{pid}/maps", encoding="utf-8", errors="surrogateescape") as f:
            return {line.split(None, 5)[5].rstrip("\n") for line in f
                    if line.count(" ") >= 5 and "/" in line}
    except (OSError, IndexError):
        return set()


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"{procfs.PROC}/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [p.decode("utf-8", "surrogateescape") for p in raw.split(b"\0") if p]


def _program(exe: str, cmdline: list[str]) -> str:
    """gunicorn, uwsgi, celery ...: the program name a runtime runs, when known."""
    for arg in [exe, *cmdline[:3]]:
        base = os.path.basename(arg).split(":")[0]
        for known in _PROGRAMS:
            if base == known or (known != "java" and base.startswith(known + "-")):
                return known
    if "-jar" in cmdline[:6]:
        jar = cmdline[cmdline.index("-jar") + 1:cmdline.index("-jar") + 2]
        return os.path.basename(jar[0]) if jar else ""
    return ""


def _thread_names(pid: int) -> list[str]:
    return _each(f"{procfs.PROC}/{pid}/task", lambda path: _text(f"{path}/comm").rstrip("\n"))


def _open_files(pid: int, suffix: str) -> list[str]:
    return [t for t in _each(f"{procfs.PROC}/{pid}/fd", os.readlink) if t.endswith(suffix)]


def _each(directory: str, read: Callable[[str], str]) -> list[str]:
    """read(DIR/NAME) for each entry of a /proc directory, skipping what vanished meanwhile."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    out = []
    for name in names:
        try:
            out.append(read(f"{directory}/{name}"))
        except OSError:
            continue
    return out


def _text(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def _read_script(pid: int, script: str) -> str:
    """The main script's text, resolved in the process's own root and directory."""
    if not script:
        return ""
    rel = script.lstrip("/")
    where = f"{procfs.PROC}/{pid}/{'root' if script.startswith('/') else 'cwd'}/{rel}"
    try:
        with open(where, "rb") as f:
            if not os.path.isfile(where) or os.fstat(f.fileno()).st_size > SCRIPT_MAX:
                return ""
            return f.read(SCRIPT_MAX).decode("utf-8", "replace")
    except OSError:
        return ""


def _add(libs: list[str], name: str) -> None:
    if name not in libs:
        libs.append(name)


def _add_first(libs: list[str], text: str, table: tuple[tuple[str, str], ...]) -> None:
    for prefix, label in table:
        if text.startswith(prefix):
            _add(libs, label)
            return

