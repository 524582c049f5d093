"""A control session across a failover: failover_session.py SERVER READY_FILE GO_FILE

Logs in anonymously, does PASV + LIST (the data connection to the address and port the 227
names), writes READY_FILE, waits (up to 120 s) for GO_FILE to exist, then does PASV + LIST
again on the same control connection and QUITs. Prints one JSON object: both 227 replies and
both listings.
"""
import ftplib
import json
import os
import socket
import sys
import time

server, ready, go = sys.argv[1], sys.argv[2], sys.argv[3]
ftp = ftplib.FTP(server, timeout=30)
ftp.login()
result = {}


def pasv_list(name):
    reply = ftp.sendcmd("PASV")
    host, port = ftplib.parse227(reply)
    data = socket.create_connection((host, port), timeout=30)
    ftp.putcmd("LIST")
    opened = ftp.getresp()
    if not opened.startswith("1"):
        raise ftplib.error_reply(opened)
    chunks = []
    while True:
        chunk = data.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
    data.close()
    done = ftp.voidresp()
    result[name] = {
        "reply": reply,
        "listing": b"".join(chunks).decode(errors="replace"),
        "done": done,
    }


pasv_list("before")
with open(ready, "w") as marker:
    marker.write("ready\n")
deadline = time.monotonic() + 120
while not os.path.exists(go):
    if time.monotonic() > deadline:
        sys.exit("no go")
    time.sleep(0.05)
pasv_list("after")
result["quit"] = ftp.quit()
print(json.dumps(result))
