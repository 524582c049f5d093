"""A small FTP server whose PASV/EPSV replies leave in two TCP segments.

split_server.py LISTEN_ADDR FILE LOG [multiline]

With "multiline", the 227 and 229 are multi-line replies that announce the address in their
first line (RFC 959 allows it): "227-Entering Passive Mode (...)", a text line, "227 OK".

Serves FILE (any name) over passive data connections on port 50000 (PASV) and 50001 (EPSV).
The 227 and 229 replies are written in two parts with TCP_NODELAY and a pause between, so the
gateway sees each line cut in the middle of its address. Every command received is appended
to LOG, as the server's own record of what reached it. Serves sessions one after another.
"""
import socket
import sys
import time

listen_addr, path, log_path = sys.argv[1:4]
multiline = sys.argv[4:5] == ["multiline"]
content = open(path, "rb").read()
PASV_PORT, EPSV_PORT = 50000, 50001


def send(conn, *parts):
    for index, part in enumerate(parts):
        if index:
            time.sleep(0.2)
        conn.sendall(part.encode())


def data_listener(port):
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((listen_addr, port))
    sock.listen(1)
    sock.settimeout(20)
    return sock


def serve(conn):
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = conn.makefile("rb")
    send(conn, "220 split server ready\r\n")
    data = None
    while True:
        line = reader.readline()
        if not line:
            return
        with open(log_path, "a") as log:
            log.write(line.decode(errors="replace"))
        verb = line.decode(errors="replace").strip().split(" ")[0].upper()
        if verb == "USER":
            send(conn, "331 Any password.\r\n")
        elif verb == "PASS":
            send(conn, "230 Logged in.\r\n")
        elif verb == "PASV":
            data = data_listener(PASV_PORT)
            h = listen_addr.replace(".", ",")
            sep = "-" if multiline else " "
            tail = "227-The address is on the first line.\r\n227 OK\r\n" if multiline else ""
            send(conn, f"227{sep}Entering Passive Mode ({h[:-1]}", f"{h[-1]},{PASV_PORT >> 8},{PASV_PORT & 255}).\r\n{tail}")
        elif verb == "EPSV":
            data = data_listener(EPSV_PORT)
            sep = "-" if multiline else " "
            tail = "229-The port is on the first line.\r\n229 OK\r\n" if multiline else ""
            send(conn, f"229{sep}Entering Extended Passive Mode (|||5", f"{str(EPSV_PORT)[1:]}|)\r\n{tail}")
        elif verb in ("RETR", "LIST", "NLST"):
            if data is None:
                send(conn, "425 Use PASV or EPSV first.\r\n")
                continue
            send(conn, "150 Here it comes.\r\n")
            peer, _ = data.accept()
            peer.sendall(content if verb == "RETR" else b"-rw-r--r-- 1 ftp ftp 1 Jan 1 00:00 file\r\n")
            peer.close()
            data.close()
            data = None
            send(conn, "226 Transfer complete.\r\n")
        elif verb == "SIZE":
            send(conn, f"213 {len(content)}\r\n")
        elif verb in ("TYPE", "MODE", "STRU", "NOOP"):
            send(conn, "200 OK.\r\n")
        elif verb == "PWD":
            send(conn, '257 "/" is the current directory.\r\n')
        elif verb == "CWD":
            send(conn, "250 OK.\r\n")
        elif verb == "FEAT":
            send(conn, "211-Features:\r\n EPSV\r\n PASV\r\n SIZE\r\n211 End\r\n")
        elif verb == "SYST":
            send(conn, "215 UNIX Type: L8\r\n")
        elif verb == "QUIT":
            send(conn, "221 Bye.\r\n")
            return
        else:
            send(conn, "502 Not implemented.\r\n")


server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((listen_addr, 21))
server.listen(8)
while True:
    conn, _ = server.accept()
    try:
        serve(conn)
    except OSError as err:
        print(f"session failed: {err}", file=sys.stderr)
    finally:
        conn.close()
