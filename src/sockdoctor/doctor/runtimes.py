"""The fix for the owner's runtime and library, first; the catalogue only when unknown.

Pure text over `model.Runtime` (read by linux/runtime.py at scan time and
kept in the snapshot, so `--from` gives the same advice). Each advice names
the one call or setting to change first.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..model import Runtime

_KIND_NAMES = {"go": "Go", "java": "Java", "python": "Python", "node": "Node.js"}

# What a remote port is, in the classes the advice below is written for.
_SQL_PORTS = frozenset({3306, 5432, 6432, 1433, 1521})
_REDIS_PORTS = frozenset({6379})


def describe(rt: Runtime) -> str:
    """One phrase for the evidence: 'Go 1.19.8 binary, net/http client'."""
    head = _KIND_NAMES.get(rt.kind)
    if head is None:
        return f"native program {rt.program}" if rt.program else "native program"
    text = f"{head} {rt.version.removeprefix('go')}".rstrip()
    text += " binary" if rt.kind == "go" else ""
    if rt.program and rt.program != "java":
        text += f" ({rt.program})"
    if rt.libraries:
        text += ", " + ", ".join(rt.libraries[:6])
    return text


@dataclass(frozen=True)
class ClientAdvice:
    """A client-side CLOSE-WAIT group, read with the owner's runtime in mind."""

    fix: str
    # "go-body-not-closed" / "node-response-not-consumed": responses nobody
    # finished (the rule then explains that instead of an idle pool); "" otherwise.
    signature: str = ""


@dataclass(frozen=True)
class Unread:
    """How many CLOSE-WAIT sockets of a group still hold the EOF, or data and the EOF."""

    count: int
    eof: int  # Recv-Q >= 1: at least the EOF was never read
    data: int  # Recv-Q > 1: data before it too

    @property
    def all_eof(self) -> bool:
        return self.count > 0 and self.eof == self.count

    @property
    def all_data(self) -> bool:
        return self.count > 0 and self.data == self.count


def client_advice(rt: Runtime | None, port: int, unread: Unread) -> ClientAdvice | None:
    """The runtime's own fix for CLOSE-WAIT toward a remote service, or None if unknown.

    Responses nobody finished have their own signatures: Go's net/http closes
    idle pooled connections itself (a background read sees the FIN), so its
    CLOSE-WAIT with the EOF unread belong to bodies never closed; an
    unconsumed Node.js response pauses its socket, leaving data and the EOF
    unread (an idle pooled socket holds the EOF alone).
    """
    if rt is None:
        return None
    libs = set(rt.libraries)
    kind = _service_class(port)
    web = kind in ("http", "other")
    if rt.kind == "go" and web and "net/http client" in libs and unread.all_eof:
        return ClientAdvice(GO_BODY_FIX, signature="go-body-not-closed")
    if rt.kind == "node" and web and unread.all_data \
            and libs & {"http", "https", "axios", "node-fetch", "got"}:
        return ClientAdvice(NODE_UNCONSUMED_FIX, signature="node-response-not-consumed")
    table = {"go": _GO, "python": _PYTHON, "java": _JAVA, "node": _NODE}.get(rt.kind)
    return _first(table, libs, kind) if table is not None else None


def _first(table: tuple[tuple[str, str, str], ...], libs: set[str], kind: str
           ) -> ClientAdvice | None:
    for lib, service, text in table:
        if lib in libs and service in (kind, "any"):
            return ClientAdvice(text)
    return None


def _service_class(port: int) -> str:
    if port in _SQL_PORTS:
        return "sql"
    if port in _REDIS_PORTS:
        return "redis"
    if port in (80, 443, 8080, 8443, 8000, 8008, 8888, 3000, 5000, 9200):
        return "http"
    return "other"


def never_closed_fix(rt: Runtime | None) -> str | None:
    """The runtime's own way to close a served connection when the peer hangs up."""
    if rt is None:
        return None
    return _SERVER_FIX.get(rt.kind)


GO_BODY_FIX = (
    "Close every response body, and read it to the end first so the connection can be "
    "reused: `resp, err := client.Do(req); if err != nil {...}; defer resp.Body.Close(); "
    "io.Copy(io.Discard, resp.Body)` — on every path, the error and early-return ones "
    "included. Transport.IdleConnTimeout is NOT the fix for this signature: Go's "
    "transport already closes idle pooled connections that the server closed; a "
    "connection whose body was never closed is not idle, it still belongs to the response.")

NODE_UNCONSUMED_FIX = (
    "Consume every response, or discard it: `res.resume()` when the body is not needed, "
    "`res.on('data', ...)`/`for await (const chunk of res)` when it is, and "
    "`req.destroy()` when giving up on it. An unconsumed response pauses its socket, so "
    "Node never reads the server's FIN and the agent can neither reuse nor free the "
    "connection. Then give the agent a timeout below the server's keep-alive timeout: "
    "new http.Agent({keepAlive: true, timeout: ...}).")

# (library, service class or "any", advice), most specific first.
_GO = (
    ("pgx", "sql", "pgxpool: Config.MaxConnIdleTime (and MaxConnLifetime) below the server's "
                   "idle timeout (idle_session_timeout, or the proxy's)"),
    ("database/sql", "sql", "database/sql: db.SetConnMaxIdleTime() a few seconds below the "
                            "server's idle timeout, and db.SetConnMaxLifetime(); close every "
                            "*sql.Rows (defer rows.Close()) so connections go back to the pool"),
    ("go-redis", "redis", "go-redis: Options.ConnMaxIdleTime below the server's `timeout`"),
    ("grpc-go", "any", "grpc-go: keepalive.ClientParameters{Time, Timeout} with "
                       "grpc.WithKeepaliveParams, and close the ClientConn when done"),
    ("net/http client", "any", "net/http: close every response body (defer resp.Body.Close()) "
                               "and read it to EOF; Transport.IdleConnTimeout below the "
                               "server's keep-alive timeout for connections left idle"),
)
_PYTHON = (
    ("SQLAlchemy", "sql", "SQLAlchemy: create_engine(url, pool_pre_ping=True, "
                          "pool_recycle=<seconds below the server's idle timeout>)"),
    ("psycopg_pool", "sql", "psycopg_pool: ConnectionPool(max_idle=<seconds below the "
                            "server's idle timeout>, check=ConnectionPool.check_connection)"),
    ("psycopg", "sql", "psycopg: close connections you no longer use (`with psycopg.connect("
                       "...) as conn:`), or pool them with psycopg_pool and max_idle"),
    ("psycopg2", "sql", "psycopg2: close connections you no longer use (conn.close() in "
                        "finally), or use a pool that recycles them below the server's timeout"),
    ("PyMySQL", "sql", "PyMySQL: conn.ping(reconnect=True) before use, and close idle "
                       "connections before the server's wait_timeout"),
    ("redis-py", "redis", "redis-py: Redis(health_check_interval=30, socket_keepalive=True)"),
    ("requests", "any", "requests: close the Session when done (`with requests.Session() as "
                        "s:`) and every stream=True response (`with s.get(url, stream=True) "
                        "as r:`); pooled connections are only checked when reused, so keep "
                        "pools small (HTTPAdapter(pool_maxsize=...))"),
    ("urllib3", "any", "urllib3: release every response (resp.release_conn() or "
                       "preload_content=True) and call PoolManager.clear() when done; a dead "
                       "pooled connection is only noticed when it is reused"),
    ("httpx", "any", "httpx: use the Client as a context manager (`with httpx.Client() as "
                     "c:`) and close streamed responses; Limits(keepalive_expiry=<below the "
                     "server's keep-alive timeout>)"),
    ("aiohttp", "any", "aiohttp: one ClientSession closed at exit (`async with "
                       "aiohttp.ClientSession() as s:`), TCPConnector(keepalive_timeout=<below "
                       "the server's>), and read or release every response"),
)
_JAVA = (
    ("HikariCP", "sql", "HikariCP: maxLifetime and idleTimeout a few seconds below the "
                        "server's idle timeout (wait_timeout, idle_session_timeout or the "
                        "proxy's), plus keepaliveTime (e.g. 30 s)"),
    ("Tomcat JDBC pool", "sql", "Tomcat JDBC pool: testWhileIdle with a validationQuery, "
                                "minEvictableIdleTimeMillis below the server's timeout"),
    ("DBCP", "sql", "DBCP: testWhileIdle with timeBetweenEvictionRunsMillis and "
                    "minEvictableIdleTimeMillis below the server's idle timeout"),
    ("Apache HttpClient", "any", "Apache HttpClient: HttpClientBuilder.evictIdleConnections("
                                 "<below the server's keep-alive timeout>) and "
                                 "evictExpiredConnections(), plus "
                                 "setValidateAfterInactivity() on the connection manager"),
    ("OkHttp", "any", "OkHttp: ConnectionPool(maxIdle, keepAliveDuration below the server's "
                      "keep-alive timeout) and close every Response body"),
    ("java.net.http", "any", "java.net.http.HttpClient: -Djdk.httpclient.keepalive.timeout="
                             "<seconds below the server's keep-alive timeout>"),
    ("Lettuce", "redis", "Lettuce: SocketOptions.builder().keepAlive(true) and a "
                         "ClientOptions pingBeforeActivateConnection"),
    ("Jedis", "redis", "Jedis: JedisPoolConfig setTestWhileIdle(true) with "
                       "timeBetweenEvictionRuns below the server's `timeout`"),
)
_NODE = (
    ("pg", "sql", "node-postgres: new Pool({idleTimeoutMillis: <below the server's idle "
                  "timeout>}) and release every client (client.release())"),
    ("mysql2", "sql", "mysql2: createPool({idleTimeout: <below wait_timeout>, "
                      "enableKeepAlive: true})"),
    ("ioredis", "redis", "ioredis: new Redis({keepAlive: 10000}) and close clients you drop"),
    ("agentkeepalive", "any", "agentkeepalive: freeSocketTimeout below the server's "
                              "keep-alive timeout"),
    ("http", "any", "Node.js http.Agent: new http.Agent({keepAlive: true, timeout: <ms below "
                    "the server's keep-alive timeout>}) so free sockets are destroyed before "
                    "the server drops them, and agent.destroy() when done; consume or "
                    "res.resume() every response"),
    ("https", "any", "Node.js https.Agent: new https.Agent({keepAlive: true, timeout: <ms "
                     "below the server's keep-alive timeout>}) so free sockets are destroyed "
                     "before the server drops them; consume or res.resume() every response"),
    ("axios", "any", "axios: pass an http(s).Agent({keepAlive: true, timeout: <ms below the "
                     "server's keep-alive timeout>}) as httpAgent/httpsAgent"),
)
_SERVER_FIX = {
    "python": ("Python: close the connection when recv() returns b'' and on every error "
               "path (`with conn:` or try/finally: conn.close()); asyncio: when "
               "`await reader.read()` returns b'', `writer.close(); await "
               "writer.wait_closed()`."),
    "go": ("Go: `defer conn.Close()` at the top of the handler goroutine, and return when "
           "Read returns io.EOF or any error."),
    "java": ("Java: try-with-resources on the Socket; with NIO, when read() returns -1, "
             "key.cancel() and channel.close() (and in every catch)."),
    "node": ("Node.js: end the socket when the peer does (`socket.on('end', () => "
             "socket.end())`, or leave allowHalfOpen false) and destroy it on 'error' and "
             "'timeout' (socket.setTimeout)."),
}
