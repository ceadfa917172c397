"""An HTTP/1.1 server that closes keep-alive connections idle for 1 s.

argv: port, body size. Prints "listening" once it accepts connections.
"""

import http.server
import socketserver
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 1  # an idle keep-alive connection is closed after 1 s

    def do_GET(self) -> None:
        body = b"x" * int(sys.argv[2])
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


server = Server(("0.0.0.0", int(sys.argv[1])), Handler)
print("listening", flush=True)
server.serve_forever()
