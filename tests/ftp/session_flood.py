"""Opens COUNT FTP control connections at once from one address, and holds those served.

session_flood.py SERVER PORT SOURCE COUNT

Each connection, in a thread of its own, started together: connect (from SOURCE), then read
the greeting. Outcomes: "served" (a greeting came), "refused" (connect failed with
ECONNREFUSED: an RST answered the SYN), "timeout", or "error:<what>". The served ones stay
open until every connection has its outcome (so that all count at once), then close. Prints
one JSON object: the outcomes with the local port and the seconds each took.
"""
import json
import socket
import sys
import threading
import time

server, port, source, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
start = threading.Barrier(count)
results = [None] * count
held = []
lock = threading.Lock()


def one(index):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    local_port = sock.getsockname()[1]
    sock.settimeout(10)
    start.wait()
    began = time.monotonic()
    try:
        sock.connect((server, port))
        line = sock.makefile("rb").readline().decode(errors="replace")
        outcome = "served" if line.startswith("220") else f"error:greeting {line!r}"
        with lock:
            held.append(sock)
    except ConnectionRefusedError:
        outcome = "refused"
        sock.close()
    except socket.timeout:
        outcome = "timeout"
        sock.close()
    except OSError as err:
        outcome = f"error:{err}"
        sock.close()
    results[index] = {
        "outcome": outcome,
        "port": local_port,
        "seconds": round(time.monotonic() - began, 3),
    }


threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
for sock in held:
    sock.close()
print(json.dumps(results))
