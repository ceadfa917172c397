"""A WSGI app whose handler sleeps: gunicorn's sync workers are all busy in it."""

import time


def app(environ, start_response):
    time.sleep(30)  # the slow handler the doctor must point at
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"done\n"]
