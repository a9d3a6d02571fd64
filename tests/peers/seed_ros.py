"""A route optimiser as seed 000 section 6.3 shows it, for tests/foreign_peers.rs.

POST /api/routes/optimize must carry {"pickup": ..., "delivery": ...} equal to the
locations given as argv[1] (a JSON object with both), that is the order's locations
as the client sent them; anything else is answered 400 with the reason. The answer
has the seed's shape: the plan under "route", with "eta" and "distance" beside it,
and no route id. Prints "PORT <n>" once listening.
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

EXPECTED = json.loads(sys.argv[1])


def point(location):
    coordinates = location.get("coordinates", location)
    return {"lat": coordinates["lat"], "lng": coordinates["lng"]}


class Optimiser(BaseHTTPRequestHandler):
    def reply(self, status, body):
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        if self.path != "/api/routes/optimize":
            return self.reply(404, {"error": "no such path"})
        length = int(self.headers.get("Content-Length", "0"))
        try:
            body = json.loads(self.rfile.read(length))
        except ValueError as e:
            return self.reply(400, {"error": f"not JSON: {e}"})
        for key in ("pickup", "delivery"):
            if body.get(key) != EXPECTED[key]:
                return self.reply(400, {"error": f"{key} is {body.get(key)!r}, expected {EXPECTED[key]!r}"})
        plan = {
            "waypoints": [point(body["pickup"]), point(body["delivery"])],
            "distance": 12.3,
            "eta": "2026-02-05T10:45:00Z",
        }
        self.reply(200, {"route": plan, "eta": plan["eta"], "distance": plan["distance"]})

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Optimiser)
server.daemon_threads = True
print(f"PORT {server.server_address[1]}", flush=True)
server.serve_forever()
