"""The loop the scripted FTP test servers share (hostile_server.py, slow_reply_server.py).

serve_forever listens on LISTEN_ADDR:21 and serves sessions one after another: greets with
BANNER, appends every line received to LOG (the server's own record of what reached it), and
hands each line's verb to ANSWER(conn, verb), which sends the reply and returns whether the
session goes on. QUIT is answered here (221) and ends the session; ANSWER's None falls back
to "200 OK.".
"""
import socket


def serve_forever(listen_addr, log_path, banner, answer, nodelay=False):
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((listen_addr, 21))
    server.listen(4)
    while True:
        conn, _ = server.accept()
        if nodelay:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = conn.makefile("rb")
        conn.sendall(banner)
        while True:
            line = reader.readline()
            if not line:
                break
            with open(log_path, "a") as log:
                log.write(line.decode(errors="replace"))
            verb = line.decode(errors="replace").split(" ")[0].strip().upper()
            if verb == "QUIT":
                conn.sendall(b"221 Bye.\r\n")
                break
            if not answer(conn, verb):
                conn.sendall(b"200 OK.\r\n")
        conn.close()
