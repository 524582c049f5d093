"""A burst of short FTP sessions: ftp_burst.py SERVER COUNT PARALLEL

Each session logs in anonymously, downloads `f` in passive mode, and quits, with a 10 s
timeout. Prints "ok N failed M" and the first errors.
"""
import concurrent.futures
import ftplib
import io
import sys

server, count, parallel = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])


def session(_):
    ftp = ftplib.FTP(server, timeout=10)
    ftp.login()
    data = io.BytesIO()
    ftp.retrbinary("RETR f", data.write)
    ftp.quit()
    return data.getvalue()


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
