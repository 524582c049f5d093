"""Raw pipelined commands, the way a client that does not wait sends them: several commands
in one TCP segment, against a real server through the gateway.

pipeline_client.py SERVER PORT OWN_ADDR

Logs in (USER and PASS in one segment), then, each in one segment:
  - "PASV\\r\\nLIST\\r\\n": a data command right behind PASV; the listing is read from the
    address the 227 names;
  - "TYPE I\\r\\nPORT <own>,<p>\\r\\n": a PORT behind another command (the gateway refuses it);
  - "PORT <own>,<p>\\r\\nLIST\\r\\n": a PORT on its own flight, a data command behind it, the
    listing read on the announced port;
then QUIT. Prints one JSON object: every reply line in the order received, per step, and the
listings' sizes.
"""
import json
import socket
import sys
import threading

server, port, own = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sock = socket.create_connection((server, port), timeout=10)
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
reader = sock.makefile("rb")


def reply():
    """One whole reply (all lines of a multi-line one), as a list of lines."""
    lines = [reader.readline().decode(errors="replace").rstrip("\r\n")]
    first = lines[0]
    if len(first) > 3 and first[3] == "-":
        while not (lines[-1].startswith(first[:3]) and lines[-1][3:4] == " "):
            lines.append(reader.readline().decode(errors="replace").rstrip("\r\n"))
    return lines


def codes(n):
    return [reply()[0] for _ in range(n)]


def listen():
    data = socket.socket()
    data.bind((own, 0))
    data.listen(1)
    data.settimeout(10)
    p = data.getsockname()[1]
    return data, f"{own.replace('.', ',')},{p >> 8},{p & 255}"


def read_all(conn):
    chunks = []
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


out = {"greeting": reply()[0]}
# Two commands, two replies: a server that logs anonymous in on USER alone (230) leaves PASS
# out of state, and its refusal comes second.
sock.sendall(b"USER anonymous\r\nPASS pipeline@\r\n")
out["login"] = codes(2)

# A data command right behind PASV.
sock.sendall(b"PASV\r\nLIST\r\n")
pasv = reply()[0]
if not pasv.startswith("227"):
    sys.exit(f"PASV answered {pasv!r} (after {out})")
numbers = pasv[pasv.index("(") + 1 : pasv.index(")")].split(",")
data = socket.create_connection((".".join(numbers[:4]), int(numbers[4]) * 256 + int(numbers[5])), timeout=10)
listing = read_all(data)
data.close()
out["pasv_list"] = [pasv] + codes(2)
out["pasv_listing_bytes"] = len(listing)

# A PORT behind another command in the same flight: refused, in order.
data, argument = listen()
sock.sendall(f"TYPE I\r\nPORT {argument}\r\n".encode())
out["type_port"] = codes(2)
data.close()

# A PORT on its own flight with a data command behind it.
data, argument = listen()
sock.sendall(f"PORT {argument}\r\nLIST\r\n".encode())
port_reply = reply()[0]
accepted = {}


def accept():
    try:
        conn, _ = data.accept()
        accepted["bytes"] = len(read_all(conn))
        conn.close()
    except OSError as err:
        accepted["error"] = str(err)


thread = threading.Thread(target=accept)
thread.start()
out["port_list"] = [port_reply] + codes(2)
thread.join()
out["port_listing"] = accepted
sock.sendall(b"QUIT\r\n")
out["quit"] = reply()[0]
print(json.dumps(out))
