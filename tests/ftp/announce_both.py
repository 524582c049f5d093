"""Announces a data connection each way and holds the session: announce_both.py SERVER OWN SECONDS

Logs in anonymously, sends PASV (the server listens) and then PORT naming OWN and a port it
listens on (the client listens), prints each reply as received and the port it listens on,
waits SECONDS (so the gateway holds both expectations), then quits. Opens no data connection.
"""
import ftplib
import socket
import sys
import time

ftp = ftplib.FTP(sys.argv[1], timeout=20)
ftp.login()
print(ftp.sendcmd("PASV"))
listener = socket.socket()
listener.bind((sys.argv[2], 0))
listener.listen(1)
host, port = listener.getsockname()
print(port)
fields = host.split(".") + [str(port >> 8), str(port & 0xFF)]
print(ftp.sendcmd("PORT " + ",".join(fields)))
sys.stdout.flush()
time.sleep(float(sys.argv[3]))
try:
    ftp.quit()
except ftplib.all_errors:
    pass
