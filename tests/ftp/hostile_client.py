"""Hostile FTP clients, one per policy check, run side by side against one server address.

hostile_client.py SERVER PORT OWN_ADDR OTHER_ADDR SESSION_LIMIT LIMIT_ADDR

For each scenario: connect, read the greeting, log in as anonymous unless the scenario is
about the login itself, send the offending line, and record what came back within a second:
a reply line ("reply:<line>"), nothing ("silent"), or a reset or close ("reset"). When a reply
came, a NOOP follows to show whether the session goes on ("after": its reply). Then opens
SESSION_LIMIT + 1 sessions at once from LIMIT_ADDR (an address of its own, so that sessions
left hanging by `drop` do not count): the last must not get a greeting. Prints one JSON object.
"""
import json
import socket
import sys
import threading

server, port, own, other, limit = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
limit_addr = sys.argv[6]
o = own.replace(".", ",")
t = other.replace(".", ",")

SCENARIOS = {
    # name: (log in first?, offending bytes)
    "out_of_state": (False, b"RETR secret-before-login\r\n"),
    "forbidden_user": (False, b"USER root\r\n"),
    "tls": (False, b"AUTH TLS\r\n"),
    "nul_or_bare_cr": (False, b"NOOP\rRETR smuggled\r\n"),
    "spoofed_direction": (True, f"227 Entering Passive Mode ({o},200,1)\r\n".encode()),
    "denied_command": (True, b"SITE CHMOD 777 denied-site\r\n"),
    "bounce": (True, f"PORT {t},200,1\r\n".encode()),
    "low_port": (True, f"PORT {o},0,80\r\n".encode()),
    "embedded": (True, f"CWD {o},200,2\r\n".encode()),
    "malformed": (True, f"PORT {o},300,1\r\n".encode()),
    "line_too_long": (True, b"NOOP " + b"x" * 600 + b"\r\n"),
}


class Session:
    def __init__(self, source=None):
        self.sock = socket.create_connection(
            (server, port), timeout=2, source_address=(source, 0) if source else None
        )
        self.reader = self.sock.makefile("rb")

    def reply(self, timeout=5):
        self.sock.settimeout(timeout)
        line = self.reader.readline()
        if not line:
            raise ConnectionResetError("closed")
        text = line.decode(errors="replace").rstrip("\r\n")
        if len(text) > 3 and text[3] == "-":
            code = text[:3]
            while not (text.startswith(code) and text[3:4] == " "):
                text = self.reader.readline().decode(errors="replace").rstrip("\r\n")
        return text

    def login(self):
        # PASS only when asked for (331): vsftpd may log anonymous in on USER alone.
        if self.command("USER anonymous\r\n").startswith("331"):
            self.command("PASS hostile@\r\n")

    def command(self, line):
        self.sock.sendall(line.encode())
        return self.reply()


def run(name, login, offending, results):
    result = {"name": name}
    try:
        session = Session()
        session.reply()
        if login:
            session.login()
        session.sock.sendall(offending)
        try:
            result["outcome"] = "reply:" + session.reply(timeout=1.5)
            result["after"] = session.command("NOOP\r\n")
        except socket.timeout:
            result["outcome"] = "silent"
        except (ConnectionResetError, BrokenPipeError):
            result["outcome"] = "reset"
        session.sock.close()
    except Exception as err:  # the harness reports it
        result["outcome"] = f"error:{type(err).__name__}:{err}"
    results.append(result)


results = []
threads = [threading.Thread(target=run, args=(name, *case, results)) for name, case in SCENARIOS.items()]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()

# Pending expectations: PASV after PASV, nothing opened; the server's third 227 is refused.
try:
    session = Session()
    session.reply()
    session.login()
    replies = [session.command("PASV\r\n") for _ in range(2)]
    session.sock.sendall(b"PASV\r\n")
    try:
        outcome = "reply:" + session.reply(timeout=1.5)
    except socket.timeout:
        outcome = "silent"
    except (ConnectionResetError, BrokenPipeError):
        outcome = "reset"
    results.append({"name": "too_many_expectations", "outcome": outcome, "replies": replies})
    session.sock.close()
except Exception as err:
    results.append({"name": "too_many_expectations", "outcome": f"error:{err}"})

# Sessions per client: the limit's worth get greetings, the next one does not.
sessions = []
greeted = 0
for _ in range(limit + 1):
    try:
        session = Session(source=limit_addr)
        session.reply(timeout=1.5)
        greeted += 1
        sessions.append(session)
    except (socket.timeout, OSError):
        pass
results.append({"name": "too_many_sessions", "outcome": f"greeted:{greeted}"})
for session in sessions:
    session.sock.close()

print(json.dumps(results))
