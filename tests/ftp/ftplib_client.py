"""One transfer with Python's ftplib: ftplib_client.py HOST PORT pasv|port get|put NAME LOCAL.

Over IPv4 ftplib speaks PASV and PORT (EPSV/EPRT only over IPv6). Uploads go to up/NAME.
"""
import ftplib
import sys

host, port, mode, op, name, local = sys.argv[1:7]
ftp = ftplib.FTP(timeout=20)
ftp.connect(host, int(port))
ftp.login()
ftp.set_pasv(mode == "pasv")
if op == "get":
    with open(local, "wb") as out:
        ftp.retrbinary(f"RETR {name}", out.write)
else:
    with open(local, "rb") as data:
        ftp.storbinary(f"STOR up/{name}", data)
ftp.quit()
