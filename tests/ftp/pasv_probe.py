"""One passive-mode attempt, step by step: pasv_probe.py SERVER pasv|epsv

Logs in anonymously, asks for a passive data port (PASV or EPSV), then tries to open the data
connection, first to the address the reply names (PASV only; EPSV names none), then to the
control connection's address and the announced port (as curl does by default), 3 s each; then
QUIT. Prints one JSON object with every reply and the outcome of each data connection
attempt ("connected" or the error), so a negative control can tell a control session that
failed from a data connection that did.
"""
import json
import socket
import sys

server, mode = sys.argv[1], sys.argv[2]
result = {"replies": {}, "data": []}


def reply(reader):
    line = reader.readline().decode()
    if len(line) > 3 and line[3] == "-":
        code = line[:3]
        while line and not (line.startswith(code) and line[3:4] == " "):
            line = reader.readline().decode()
    return line.strip()


def attempt(address, port):
    try:
        data = socket.create_connection((address, port), timeout=3)
        data.close()
        outcome = "connected"
    except OSError as err:
        outcome = f"{type(err).__name__}: {err}"
    result["data"].append({"to": f"{address}:{port}", "outcome": outcome})


conn = socket.create_connection((server, 21), timeout=10)
reader = conn.makefile("rb")


def command(name, text):
    conn.sendall((text + "\r\n").encode())
    result["replies"][name] = reply(reader)
    return result["replies"][name]


result["replies"]["greeting"] = reply(reader)
if command("user", "USER anonymous").startswith("331"):
    command("pass", "PASS probe@")
answer = command("passive", mode.upper())
if mode == "pasv" and answer.startswith("227"):
    numbers = answer[answer.index("(") + 1:answer.index(")")].split(",")
    port = int(numbers[4]) * 256 + int(numbers[5])
    attempt(".".join(numbers[:4]), port)
    attempt(server, port)
elif mode == "epsv" and answer.startswith("229"):
    attempt(server, int(answer.split("|||")[1].split("|")[0]))
# The control connection still answers after the failed data connections.
command("quit", "QUIT")
conn.close()
print(json.dumps(result))
