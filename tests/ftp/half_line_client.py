"""An FTP client that holds half a command line while the server talks, step by step.

half_line_client.py SERVER

Logs in, then runs three steps, each started by a line on stdin and ended by a line on
stdout ("done <step>"), so that the test can read the gateway's counters between them:

- "plain": HELP, and its (slow, multi-line) reply read whole;
- "held": HELP, and after the reply's first line half of the next command ("NO", no CRLF),
  then "holding" on stdout, then the rest of the reply read whole: the half line stays
  unfinished all along;
- "after": the rest of the line ("OP\r\n", so the server gets "NOOP"), its 200, then HELP and
  its reply again.

Each step ends with a pause longer than a delayed ACK, so that the client's last ACK is out.
Then QUIT. Exits non-zero on any unexpected reply.
"""
import socket
import sys
import time

server = sys.argv[1]
conn = socket.create_connection((server, 21), timeout=20)
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
reader = conn.makefile("rb")


def line():
    text = reader.readline().decode()
    if not text:
        sys.exit("the control connection closed")
    return text


def reply(first=None):
    """Reads one (possibly multi-line) reply, after `first` if already read; its last line."""
    text = first if first is not None else line()
    if len(text) > 3 and text[3] == "-":
        code = text[:3]
        while not (text.startswith(code) and text[3:4] == " "):
            text = line()
    return text.strip()


def expect(text, code):
    if not text.startswith(code):
        sys.exit(f"expected {code}, got {text!r}")


def step(name):
    """Waits for the test to start step `name`."""
    if sys.stdin.readline().strip() != name:
        sys.exit(f"expected the step {name!r} on stdin")


def done(name):
    time.sleep(0.3)
    print(f"done {name}", flush=True)


expect(reply(), "220")
conn.sendall(b"USER anonymous\r\n")
expect(reply(), "331")
conn.sendall(b"PASS gateway@\r\n")
expect(reply(), "230")
done("login")

step("plain")
conn.sendall(b"HELP\r\n")
expect(reply(), "214")
done("plain")

step("held")
conn.sendall(b"HELP\r\n")
first = line()
expect(first, "214-")
conn.sendall(b"NO")
# Whatever the client sent before (its ACK of the reply's first line) is out: the test counts
# from here.
print("holding", flush=True)
expect(reply(first), "214")
done("held")

step("after")
conn.sendall(b"OP\r\n")
expect(reply(), "200")
conn.sendall(b"HELP\r\n")
expect(reply(), "214")
done("after")

conn.sendall(b"QUIT\r\n")
expect(reply(), "221")
