"""What scripts/api-conformance's schemathesis runs start from.

Waits for hail's /readyz, then makes the accounts and the data each role's run needs so
that the trip and offer routes are reached with ids that exist, not only with made-up
ones (404):

- the tested passenger, driver and operator;
- two trips waiting in Busan: one for the operator to read and cancel, one to assign;
- a trip in Gangnam offered to the tested driver, for it to accept, arrive at, start and
  complete;
- a second driver, online far from every trip, for the operator to assign a trip to.

Writes each role's schemathesis configuration (ROLE.toml) into the folder it is given and
prints `ROLE TOKEN` lines, then `ready`. Then it keeps the second driver online (answering
the server's pings, sending its position) until it is killed.

Standard library only: it runs before anything else is installed.
"""

import base64
import json
import os
import re
import select
import socket
import sys
import time
import urllib.error
import urllib.request

base, operator_token, folder = sys.argv[1:]
port = int(base.rsplit(":", 1)[1])

# Every check stays on; two learn what a WebSocket route answers. 101 Switching Protocols
# is a handshake's success, where schemathesis counts only 2xx and 3xx. 426 with
# `Sec-WebSocket-Version: 13` is how RFC 6455 §4.4 has a server refuse a version it does
# not speak: a rejection of invalid input like 400.
CHECKS = """\
[checks.not_a_server_error]
expected-statuses = ["101", "2xx", "3xx", "4xx"]

[checks.positive_data_acceptance]
expected-statuses = ["101", "2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]

[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "415", "422", "426", "428", "429", "5xx"]
"""

GANGNAM = (37.4979, 127.0276)
BUSAN = (35.1796, 129.0756)
# Beyond every search radius from the seeded trips and from the position the schema's
# example (Gangnam) gives most of the runs' trips.
NOWHERE = (-45.0, -170.0)


def call(method, path, token=None, body=None):
    request = urllib.request.Request(
        base + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
    )
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def passenger(name):
    return call("POST", "/v1/passengers", body={"name": name})


def driver(name, plate):
    body = {"name": name, "vehicle": {"plate": plate}}
    return call("POST", "/v1/drivers", operator_token, body)


def request_trip(who, spot):
    position = {"lat": spot[0], "lng": spot[1]}
    body = {"pickup": position, "dropoff": position}
    return call("POST", "/v1/trips", who["token"], body)["id"]


class DriverSocket:
    """A minimal WebSocket client (RFC 6455): enough to be a driver who is online."""

    def __init__(self, who):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /v1/driver/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Authorization: Bearer {who['token']}\r\nConnection: Upgrade\r\n"
                "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                f"Sec-WebSocket-Key: {key}\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                sys.exit("a driver socket closed during its handshake")
            head += chunk
        head, self.buffered = head.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 101"):
            sys.exit(f"a driver socket was refused: {head.decode(errors='replace')}")

    def send(self, opcode, data):
        mask = os.urandom(4)
        assert len(data) < 126
        masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(data))
        self.sock.sendall(bytes([0x80 | opcode, 0x80 | len(data)]) + mask + masked)

    def locate(self, spot):
        message = {"type": "location", "lat": spot[0], "lng": spot[1]}
        self.send(0x1, json.dumps(message).encode())

    def take(self, count):
        while len(self.buffered) < count:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise EOFError("the driver socket closed")
            self.buffered += chunk
        taken, self.buffered = self.buffered[:count], self.buffered[count:]
        return taken

    def frame(self):
        """The next frame's opcode and payload; answers pings on the way."""
        while True:
            first, second = self.take(2)
            length = second & 0x7F
            if length == 126:
                length = int.from_bytes(self.take(2), "big")
            elif length == 127:
                length = int.from_bytes(self.take(8), "big")
            opcode, payload = first & 0x0F, self.take(length)
            if opcode == 0x9:
                self.send(0xA, payload)
                continue
            if opcode == 0x8:
                raise EOFError(f"the driver socket was closed: {payload!r}")
            return opcode, payload


for _ in range(300):
    try:
        call("GET", "/readyz")
        break
    except (OSError, urllib.error.URLError):
        time.sleep(0.1)
else:
    sys.exit("hail did not become ready within 30 s")

operator = {"token": operator_token}
tested_passenger = passenger("Conformance passenger")
tested_driver = driver("Conformance driver", "CONF 1")
standby_driver = driver("Standby driver", "CONF 2")

# Requested before any driver is online, and beyond every search radius from them.
operator_trip = request_trip(passenger("Busan passenger"), BUSAN)
assigned_trip = request_trip(passenger("Second Busan passenger"), BUSAN)

standby = DriverSocket(standby_driver)
standby.locate(NOWHERE)

online = DriverSocket(tested_driver)
online.locate(GANGNAM)
time.sleep(0.5)  # the ping reaches the fleet before the trip is dispatched
driver_trip = request_trip(passenger("Gangnam passenger"), (GANGNAM[0] + 0.0002, GANGNAM[1]))
offer = None
while offer is None:
    opcode, payload = online.frame()
    if opcode == 0x1:
        message = json.loads(payload)
        if message.get("type") == "offer" and message["trip_id"] == driver_trip:
            offer = message["offer_id"]
# The tested driver's own run opens sockets of its own, each replacing the one before.
online.sock.close()


def configuration(role, bindings, skip=None):
    """Each run's made-up ids mixed with ones that exist (schemathesis "dictionaries"):
    `bindings` are pairs of a path regex and the ids of each of those routes' parameters.
    `skip` is a route this role's run leaves out."""
    lines = [CHECKS]
    if skip:
        lines += ["[[operations]]", f"include-path = {json.dumps(skip)}", "enabled = false", ""]
    for route, (path, parameters) in enumerate(bindings):
        entries = []
        for key, values in parameters.items():
            name = f"route{route}_{key.replace('.', '_')}"
            lines += [f"[dictionaries.{name}]", f"values = {json.dumps(values)}", ""]
            entries.append(f'"{key}" = {{ dictionary = "{name}", probability = 0.7 }}')
        lines += ["[[operations]]", f"include-path-regex = {json.dumps(path)}",
                  f"parameters = {{ {', '.join(entries)} }}", ""]
    with open(os.path.join(folder, f"{role}.toml"), "w") as out:
        out.write("\n".join(lines))


# The driver's run leaves cancel out (the passenger's and the operator's runs test it): a
# driver's cancel gives the trip back to be dispatched again, and it would come, with an
# id schemathesis read off an earlier answer, before start and complete, which then could
# only be 404 — and complete is the one answer that carries a fare.
configuration("driver", [
    (r"^/v1/trips/[^/]+(/(arrive|start|complete|events|ws))?$", {"path.id": [driver_trip]}),
    (r"^/v1/offers/", {"path.id": [offer]}),
], skip="/v1/trips/{id}/cancel")
configuration("passenger", [])
# One trip to assign and one for the rest: a cancel first would leave nothing to assign.
configuration("operator", [
    (r"^/v1/trips/[^/]+(/(cancel|events|ws))?$", {"path.id": [operator_trip]}),
    (r"^/v1/trips/[^/]+/assign$",
     {"path.id": [assigned_trip], "body.driver_id": [standby_driver["id"]]}),
])
# In this order: the operator's run finds every trip in its snapshots and may cancel the
# driver's, so it goes last.
for role, who in (("driver", tested_driver), ("passenger", tested_passenger), ("operator", operator)):
    assert re.fullmatch(r"[A-Za-z0-9_-]+", who["token"])
    print(role, who["token"])
print("ready", flush=True)

# Fresh pings keep the standby driver dispatchable (and so assignable) throughout.
last_ping = time.monotonic()
while True:
    if time.monotonic() - last_ping > 10:
        standby.locate(NOWHERE)
        last_ping = time.monotonic()
    readable, _, _ = select.select([standby.sock], [], [], 1.0)
    if readable or standby.buffered:
        standby.frame()
