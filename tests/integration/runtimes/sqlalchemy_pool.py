"""A SQLAlchemy engine (psycopg 3) whose pooled connections outlive the server's timeout."""

import sys
import threading
import time

from sqlalchemy import create_engine, text

engine = create_engine(sys.argv[1], pool_size=3)


def query() -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_sleep(0.2)"))  # three at once: three pooled connections


workers = [threading.Thread(target=query) for _ in range(3)]
for w in workers:
    w.start()
for w in workers:
    w.join()
print("ready", flush=True)
time.sleep(3600)
