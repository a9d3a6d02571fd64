"""A warehouse as seed 000 section 6.4 shows it, for tests/foreign_peers.rs.

Answers RESERVE with the seed's 3-field ACK. The order id picks a variant of the
answer: "...-CRLF" ends it with CRLF, "...-PIPE" with a trailing "|", "...-BAD"
answers something outside the protocol. A request that is not a strict RESERVE,
RELEASE or PING line gets ERR, so the test sees what our client wrote. Prints
"PORT <n>" once listening; every request line goes to stderr.
"""
import json
import re
import socketserver
import sys

RESERVE = re.compile(r"^RESERVE\|([A-Za-z0-9_-]+)\|(\{.*\})$")
RELEASE = re.compile(r"^RELEASE\|([A-Za-z0-9_-]+)$")
VARIANTS = {
    "CRLF": "ACK|WH-001|INVENTORY_RESERVED\r\n",
    "PIPE": "ACK|WH-001|INVENTORY_RESERVED|\n",
    "BAD": "OK reserved\n",
}


def answer(line):
    if line == "PING":
        return "PONG\n"
    reserve = RESERVE.match(line)
    if reserve:
        package = json.loads(reserve.group(2))
        if not isinstance(package.get("weight"), (int, float)):
            return "ERR|package without a weight\n"
        variant = reserve.group(1).rsplit("-", 1)[-1]
        return VARIANTS.get(variant, "ACK|WH-001|INVENTORY_RESERVED\n")
    if RELEASE.match(line):
        return "ACK|WH-001|RELEASED\n"
    return "ERR|not a request of the protocol\n"


class Warehouse(socketserver.StreamRequestHandler):
    def handle(self):
        for raw in self.rfile:
            line = raw.decode("utf-8").rstrip("\n")
            print(line, file=sys.stderr, flush=True)
            self.wfile.write(answer(line).encode("utf-8"))
            self.wfile.flush()


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


with Server(("127.0.0.1", 0), Warehouse) as server:
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()
