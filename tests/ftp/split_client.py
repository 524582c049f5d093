"""An FTP client whose PORT command leaves in two TCP segments.

split_client.py SERVER OWN_ADDR NAME

Logs in anonymously, sends "PORT h1,h2,h3,h4,p1," and "p2" in two writes (TCP_NODELAY, a
pause between), downloads NAME over the active data connection, then goes on with the same
control connection (PASV, NOOP, QUIT) to show the sequence numbers stayed right. Prints the
sha256 of what it received and the replies it got.
"""
import hashlib
import socket
import sys
import time

server, own, name = sys.argv[1:4]
DATA_PORT = 50001

conn = socket.create_connection((server, 21), timeout=20)
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
reader = conn.makefile("rb")


def reply():
    """Reads one (possibly multi-line) reply; returns its last line."""
    line = reader.readline().decode()
    if len(line) > 3 and line[3] == "-":
        code = line[:3]
        while not (line.startswith(code) and line[3:4] == " "):
            line = reader.readline().decode()
    return line.strip()


def command(*parts, expect):
    for index, part in enumerate(parts):
        if index:
            time.sleep(0.2)
        conn.sendall(part.encode())
    line = reply()
    if not line.startswith(expect):
        sys.exit(f"{''.join(parts).strip()!r} got {line!r}")
    return line


replies = [reply()]
replies.append(command("USER anonymous\r\n", expect="331"))
replies.append(command("PASS gateway@\r\n", expect="230"))
replies.append(command("TYPE I\r\n", expect="200"))
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind((own, DATA_PORT))
listener.listen(1)
listener.settimeout(20)
h = own.replace(".", ",")
replies.append(command(f"PORT {h},{DATA_PORT >> 8},", f"{DATA_PORT & 255}\r\n", expect="200"))
conn.sendall(f"RETR {name}\r\n".encode())
replies.append(reply())
data, _ = listener.accept()
digest = hashlib.sha256()
while chunk := data.recv(65536):
    digest.update(chunk)
data.close()
replies.append(reply())
replies.append(command("PASV\r\n", expect="227"))
replies.append(command("NOOP\r\n", expect="200"))
replies.append(command("QUIT\r\n", expect="221"))
print(digest.hexdigest())
for line in replies:
    print(line)
