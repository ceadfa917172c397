"""Re-record tests/data/dump_v4v6.bin: a real sock_diag dump from a private namespace.

Run as root: python tests/data/record_dump.py. The file holds length-prefixed
recv() chunks of one AF_INET and one AF_INET6 dump (tcp_info requested), and
dump_v4v6.json the sockets a correct parser must find in it.
"""

from __future__ import annotations

import json
import pathlib
import socket
import struct
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from conftest import Script
from sockdoctor.lab.netlab import Lab
from sockdoctor.linux import netns, sockdiag
from sockdoctor.model import ALL_STATES_MASK

HERE = pathlib.Path(__file__).parent


def record(family: int) -> list[bytes]:
    sock = sockdiag.open_socket()
    sock.send(sockdiag.dump_request(family, ALL_STATES_MASK, sockdiag.EXT_INFO, 7))
    chunks: list[bytes] = []
    parser = sockdiag.DumpParser(sockdiag.DumpOptions(ALL_STATES_MASK), 0, [])
    while not parser.done:
        data = sock.recv(1 << 20)
        chunks.append(data)
        parser.feed(data)
    return chunks


def main() -> None:
    with Lab("rec", pair=False) as lab:
        s = Script(lab, lab.server, """
            l4 = socket.socket(); l4.bind(("127.0.0.1", 8080)); l4.listen(8)
            l6 = socket.socket(socket.AF_INET6); l6.bind(("::1", 8443)); l6.listen(8)
            c4 = socket.create_connection(("127.0.0.1", 8080)); a4, _ = l4.accept()
            c6 = socket.create_connection(("::1", 8443)); a6, _ = l6.accept()
            c4.shutdown(socket.SHUT_WR)  # a4 -> CLOSE_WAIT, c4 -> FIN_WAIT2
            time.sleep(0.2); emit("ready"); wait()
        """)
        s.read()
        ns = netns.NsRef(lab.server.inode(), lab.server.netns, "named", lab.server.path)
        chunks = netns.run_in(ns, lambda: record(socket.AF_INET) + record(socket.AF_INET6))
        expected = netns.run_in(ns, lambda: [
            [sk.family, sk.state, sk.local_addr, sk.local_port, sk.peer_addr, sk.peer_port,
             sk.inode, sk.cookie]
            for sk in sockdiag.dump(sockdiag.open_socket(),
                                    sockdiag.DumpOptions(ALL_STATES_MASK, info=True))])
    with open(HERE / "dump_v4v6.bin", "wb") as f:
        for chunk in chunks:
            f.write(struct.pack("=I", len(chunk)) + chunk)
    (HERE / "dump_v4v6.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()
