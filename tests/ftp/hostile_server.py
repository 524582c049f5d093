"""An FTP server that attacks its clients: hostile_server.py LISTEN_ADDR LOG

Its reply to USER carries a data address inside a line that announces none (slipstreaming),
and its reply to PASS is a PORT command (a command from the server's side). Everything else
is answered normally. Lines received are appended to LOG.
"""
import sys

from scripted_server import serve_forever

listen_addr, log_path = sys.argv[1:3]
h = listen_addr.replace(".", ",")


def answer(conn, verb):
    if verb == "USER":
        conn.sendall(f"331 Password for user at {h},4,1 please.\r\n".encode())
    elif verb == "PASS":
        conn.sendall(f"PORT {h},4,2\r\n".encode())
        conn.sendall(b"230 Logged in.\r\n")
    else:
        return False
    return True


serve_forever(listen_addr, log_path, b"220 hostile server\r\n", answer)
