"""The attacker's server of a NAT slipstreaming attempt: it plays along with every FTP-looking
line a victim's program was made to send, as an attacker's server would.

slipstream_server.py LISTEN_ADDR PORT LOG

Greets with 220; answers USER with 230 at once (no password asked), PASS with 230, PORT and
EPRT with 200, anything else that looks like a command with 200; HTTP header lines get no
answer. Every line received is appended to LOG, as the record of what reached the attacker
(the test checks that no PORT line in it was rewritten). Serves connections one after another
until killed.
"""
import socket
import sys

listen_addr, port, log_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]

listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind((listen_addr, port))
listener.listen(8)
open(log_path, "a").close()


def serve(conn):
    conn.settimeout(10)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = conn.makefile("rb")
    conn.sendall(b"220 ready\r\n")
    while True:
        line = reader.readline()
        if not line:
            return
        with open(log_path, "a") as log:
            log.write(line.decode(errors="replace"))
        verb = line.decode(errors="replace").strip().split(" ")[0].upper()
        if verb in ("USER", "PASS"):
            conn.sendall(b"230 Logged in.\r\n")
        elif verb in ("PORT", "EPRT"):
            conn.sendall(b"200 PORT command successful.\r\n")
        elif verb.isalpha() and 3 <= len(verb) <= 4:
            conn.sendall(b"200 OK.\r\n")


while True:
    conn, _ = listener.accept()
    try:
        serve(conn)
    except OSError:
        pass
    finally:
        conn.close()
