"""A burst of short FTP sessions: ftp_burst.py SERVER COUNT PARALLEL [TIMES]

Each session logs in anonymously, downloads `f` in passive mode, and quits, with a 10 s
timeout. Prints "ok N failed M" and the first errors. With TIMES, each session appends a line
"START END ok|failed" (wall-clock seconds) to that file as it ends, so that a test can see
which sessions were in flight at a given moment while the burst still runs.
"""
import concurrent.futures
import ftplib
import io
import sys
import threading
import time

server, count, parallel = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
times = open(sys.argv[4], "a", buffering=1) if len(sys.argv) > 4 else None
times_lock = threading.Lock()


def session(_):
    start = time.time()
    outcome = "failed"
    try:
        ftp = ftplib.FTP(server, timeout=10)
        ftp.login()
        data = io.BytesIO()
        ftp.retrbinary("RETR f", data.write)
        ftp.quit()
        outcome = "ok" if data.getvalue() == b"burst\n" else "failed"
        return data.getvalue()
    finally:
        if times:
            with times_lock:
                times.write(f"{start:.6f} {time.time():.6f} {outcome}\n")


ok, errors = 0, []
with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
    futures = [pool.submit(session, i) for i in range(count)]
    for future in futures:
        try:
            if future.result() == b"burst\n":
                ok += 1
            else:
                errors.append("wrong content")
        except Exception as err:  # reported, counted
            errors.append(f"{type(err).__name__}: {err}")
print(f"ok {ok} failed {len(errors)}")
for error in errors[:5]:
    print(error)
