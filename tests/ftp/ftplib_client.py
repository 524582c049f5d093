"""One transfer with Python's ftplib: ftplib_client.py HOST PORT pasv|epsv|port get|put NAME LOCAL.

Over IPv4 ftplib speaks PASV and PORT (EPSV/EPRT only over IPv6); "epsv" makes it take the
IPv6 path of its passive mode (EPSV, the 229's port on the control connection's address).
ftplib reads a 227/229's numbers from the whole reply, so it also takes multi-line ones.
Uploads go to up/NAME.
"""
import ftplib
import socket
import sys

host, port, mode, op, name, local = sys.argv[1:7]
ftp = ftplib.FTP(timeout=20)
ftp.connect(host, int(port))
ftp.login()
ftp.set_pasv(mode in ("pasv", "epsv"))
if mode == "epsv":
    # Only makepasv() looks at the family for passive transfers: EPSV instead of PASV.
    ftp.af = socket.AF_INET6
if op == "get":
    with open(local, "wb") as out:
        ftp.retrbinary(f"RETR {name}", out.write)
else:
    with open(local, "rb") as data:
        ftp.storbinary(f"STOR up/{name}", data)
ftp.quit()
