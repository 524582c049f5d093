"""An FTP server whose HELP reply trickles: slow_reply_server.py LISTEN_ADDR LOG

Answers USER, PASS, NOOP and QUIT at once; HELP with a multi-line 214 reply of which every
line leaves in a TCP segment of its own (TCP_NODELAY), 0.15 s apart, so that the client's
TCP acknowledges each with a pure ACK while the reply lasts. Lines received are appended to
LOG, as the server's own record of what reached it. Serves sessions one after another.
"""
import sys
import time

from scripted_server import serve_forever

listen_addr, log_path = sys.argv[1:3]
HELP_LINES = 8


def answer(conn, verb):
    if verb == "USER":
        conn.sendall(b"331 Password please.\r\n")
    elif verb == "PASS":
        conn.sendall(b"230 Logged in.\r\n")
    elif verb == "HELP":
        conn.sendall(b"214-Commands, one segment at a time:\r\n")
        for index in range(HELP_LINES):
            time.sleep(0.15)
            conn.sendall(f" line {index} of the help text\r\n".encode())
        time.sleep(0.15)
        conn.sendall(b"214 End of help.\r\n")
    else:
        return False
    return True


serve_forever(listen_addr, log_path, b"220 slow reply server\r\n", answer, nodelay=True)
