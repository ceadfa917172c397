"""A requests Session whose pooled connection outlives the server's idle timeout."""

import sys
import time

import requests

session = requests.Session()
for _ in range(3):
    body = session.get(sys.argv[1]).content  # read whole: the connection goes back to the pool
print("ready", flush=True)
time.sleep(3600)
