"""Which service a remote port usually is, and the pool knobs of its common clients."""

from __future__ import annotations

_SQL_POOLS = (
    "HikariCP: maxLifetime and idleTimeout a few seconds below the server's idle timeout, "
    "plus keepaliveTime; SQLAlchemy: create_engine(pool_recycle=<below that>, "
    "pool_pre_ping=True); Go database/sql: db.SetConnMaxIdleTime() and "
    "db.SetConnMaxLifetime(); Tomcat/DBCP pools: testOnBorrow or testWhileIdle with a "
    "validationQuery, minEvictableIdleTimeMillis + timeBetweenEvictionRunsMillis; "
    "psycopg_pool: max_idle")

_HTTP_POOLS = (
    "Go net/http: Transport.IdleConnTimeout below the server's keep-alive timeout; "
    "Apache HttpClient: evictIdleConnections() and setValidateAfterInactivity(); OkHttp: "
    "ConnectionPool(maxIdle, keepAliveDuration); Node.js: http.Agent({keepAlive: true, "
    "timeout}) or agentkeepalive's freeSocketTimeout; Python requests/urllib3: close "
    "the Session when done, or keep pools small (urllib3 only notices a dead connection "
    "when it reuses it)")

_SERVICES: dict[int, tuple[str, str]] = {
    3306: ("MySQL", "server side: wait_timeout / interactive_timeout, or the proxy's "
                    "idle timeout. " + _SQL_POOLS),
    5432: ("PostgreSQL", "server side: idle_session_timeout, or PgBouncer's "
                         "server_idle_timeout / client_idle_timeout. " + _SQL_POOLS),
    6432: ("PgBouncer", "server side: client_idle_timeout. " + _SQL_POOLS),
    1433: ("SQL Server", _SQL_POOLS),
    1521: ("Oracle", _SQL_POOLS),
    6379: ("Redis", "redis-py: Redis(health_check_interval=30, socket_keepalive=True); "
                    "Jedis: JedisPoolConfig testWhileIdle/testOnBorrow with "
                    "timeBetweenEvictionRuns; go-redis: ConnMaxIdleTime; Lettuce: "
                    "SocketOptions keepAlive; server side: the `timeout` setting"),
    11211: ("memcached", "pymemcache/pylibmc and spymemcached: an idle timeout or "
                         "retry-on-dead-connection option; server side: idle_timeout"),
    27017: ("MongoDB", "maxIdleTimeMS in the connection string (all official drivers)"),
    5672: ("AMQP", "enable heartbeats (pika heartbeat=, Java ConnectionFactory "
                   "setRequestedHeartbeat) so dead connections are detected"),
    9092: ("Kafka", "connections.max.idle.ms on the client below the broker's"),
    9200: ("Elasticsearch", _HTTP_POOLS),
    2379: ("etcd", "gRPC keepalive: grpc.keepalive_time_ms / WithKeepaliveParams"),
}
for _port in (80, 443, 8080, 8443, 8000, 8008, 8888, 3000, 5000):
    _SERVICES[_port] = ("HTTP", _HTTP_POOLS)

_GENERIC = ("set the pool's idle timeout below the server's (or the load balancer's) "
            "idle timeout, validate connections on checkout (test-on-borrow, pre-ping), "
            "and enable TCP keepalive. " + _SQL_POOLS + "; " + _HTTP_POOLS)


def service_name(port: int) -> str:
    return _SERVICES.get(port, ("",))[0]


def pool_knobs(port: int) -> str:
    return _SERVICES.get(port, ("", _GENERIC))[1]
