"""FTP sessions per second: ftp_rate.py SERVER SECONDS PARALLEL

PARALLEL workers run complete sessions back to back for SECONDS: connect, anonymous login,
PASV, LIST (over the data connection), QUIT. Each control connection's connect (SYN sent to
SYN-ACK received, the handshake) and each PASV's round trip (command sent to 227 received) are
timed. Prints one JSON object: sessions completed, failures, elapsed seconds, and the connect
times and PASV round trips in microseconds.
"""
import json
import socket
import sys
import threading
import time

server, seconds, parallel = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
lock = threading.Lock()
result = {"sessions": 0, "failures": 0, "connect_us": [], "pasv_us": [], "errors": []}


def reply(reader):
    line = reader.readline().decode()
    if not line:
        raise ConnectionError("closed")
    if len(line) > 3 and line[3] == "-":
        code = line[:3]
        while not (line.startswith(code) and line[3:4] == " "):
            line = reader.readline().decode()
    return line.strip()


def session():
    started = time.perf_counter()
    conn = socket.create_connection((server, 21), timeout=10)
    connect_us = (time.perf_counter() - started) * 1e6
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = conn.makefile("rb")

    def command(text):
        conn.sendall((text + "\r\n").encode())
        return reply(reader)

    reply(reader)
    if command("USER anonymous").startswith("331"):
        command("PASS rate@")
    started = time.perf_counter()
    answer = command("PASV")
    pasv_us = (time.perf_counter() - started) * 1e6
    if not answer.startswith("227"):
        raise ConnectionError(answer)
    numbers = answer[answer.index("(") + 1:answer.index(")")].split(",")
    data = socket.create_connection((".".join(numbers[:4]), int(numbers[4]) * 256 + int(numbers[5])), timeout=10)
    conn.sendall(b"LIST\r\n")
    if not reply(reader).startswith("1"):
        raise ConnectionError("LIST refused")
    while data.recv(65536):
        pass
    data.close()
    if not reply(reader).startswith("226"):
        raise ConnectionError("LIST failed")
    command("QUIT")
    conn.close()
    return connect_us, pasv_us


def worker(deadline):
    while time.monotonic() < deadline:
        try:
            connect_us, pasv_us = session()
            with lock:
                result["sessions"] += 1
                result["connect_us"].append(round(connect_us, 1))
                result["pasv_us"].append(round(pasv_us, 1))
        except Exception as err:
            with lock:
                result["failures"] += 1
                if len(result["errors"]) < 5:
                    result["errors"].append(f"{type(err).__name__}: {err}")


start = time.monotonic()
deadline = start + seconds
threads = [threading.Thread(target=worker, args=(deadline,)) for _ in range(parallel)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
result["seconds"] = round(time.monotonic() - start, 3)
print(json.dumps(result))
