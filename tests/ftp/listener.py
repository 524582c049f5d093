"""A TCP service on a host that is never published: it records every connection it accepts.

listener.py ADDR PORT LOG

Appends "accepted <peer address>:<port>" to LOG for each connection, then closes it. Runs
until killed.
"""
import socket
import sys

addr, port, log_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind((addr, port))
listener.listen(8)
open(log_path, "a").close()
while True:
    conn, peer = listener.accept()
    with open(log_path, "a") as log:
        log.write(f"accepted {peer[0]}:{peer[1]}\n")
    conn.close()
