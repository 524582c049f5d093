"""Holds an FTP control session open: hold_session.py SERVER SECONDS

Logs in anonymously, asks for passive mode (so the gateway holds an expectation), then waits
SECONDS before quitting.
"""
import ftplib
import sys
import time

ftp = ftplib.FTP(sys.argv[1], timeout=20)
ftp.login()
ftp.sendcmd("PASV")
time.sleep(float(sys.argv[2]))
try:
    ftp.quit()
except (ftplib.all_errors):
    pass
