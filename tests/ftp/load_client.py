"""Many FTP control sessions at once, and transfers through them: the soak's load.

load_client.py SERVER SESSIONS TRANSFERS SECONDS SHA256

Opens SESSIONS control sessions (anonymous login) and keeps them all open; then, for SECONDS,
runs TRANSFERS passive downloads of `f` at a time over randomly chosen sessions, checking each
against SHA256; then checks every session still answers (NOOP) and quits them all. Prints one
JSON object: counts of everything and of every failure.
"""
import asyncio
import hashlib
import json
import random
import resource
import sys
import time

server, sessions_wanted, parallel, seconds, expected = (
    sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
# As many descriptors as the hard limit allows (each session holds one or two).
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
result = {"sessions_wanted": sessions_wanted, "opened": 0, "open_failed": 0,
          "transfers": 0, "transfer_failed": 0, "alive_at_end": 0, "errors": []}


def note(error):
    if len(result["errors"]) < 10:
        result["errors"].append(error)


async def reply(reader):
    line = (await asyncio.wait_for(reader.readline(), 30)).decode()
    if not line:
        raise ConnectionError("closed")
    if len(line) > 3 and line[3] == "-":
        code = line[:3]
        while not (line.startswith(code) and line[3:4] == " "):
            line = (await asyncio.wait_for(reader.readline(), 30)).decode()
    return line.strip()


async def command(session, text):
    reader, writer, lock = session
    writer.write((text + "\r\n").encode())
    await writer.drain()
    return await reply(reader)


async def open_session(limit):
    async with limit:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(server, 21), 30)
            session = (reader, writer, asyncio.Lock())
            await reply(reader)
            answer = await command(session, "USER anonymous")
            if answer.startswith("331"):
                answer = await command(session, "PASS load@")
            if not answer.startswith("230"):
                raise ConnectionError(answer)
            await command(session, "TYPE I")
            result["opened"] += 1
            return session
        except Exception as err:
            result["open_failed"] += 1
            note(f"open: {type(err).__name__}: {err}")
            return None


async def transfer(session):
    async with session[2]:
        try:
            answer = await command(session, "PASV")
            if not answer.startswith("227"):
                raise ConnectionError(answer)
            numbers = answer[answer.index("(") + 1:answer.index(")")].split(",")
            host = ".".join(numbers[:4])
            port = int(numbers[4]) * 256 + int(numbers[5])
            data_reader, data_writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), 30)
            session[1].write(b"RETR f\r\n")
            await session[1].drain()
            preliminary = await reply(session[0])
            if not preliminary.startswith("1"):
                raise ConnectionError(preliminary)
            digest = hashlib.sha256()
            while chunk := await asyncio.wait_for(data_reader.read(65536), 30):
                digest.update(chunk)
            data_writer.close()
            done = await reply(session[0])
            if not done.startswith("226") or digest.hexdigest() != expected:
                raise ConnectionError(f"{done} sha256 {digest.hexdigest()}")
            result["transfers"] += 1
        except Exception as err:
            result["transfer_failed"] += 1
            note(f"transfer: {type(err).__name__}: {err}")


async def main():
    started = time.monotonic()
    limit = asyncio.Semaphore(256)
    sessions = [s for s in await asyncio.gather(
        *(open_session(limit) for _ in range(sessions_wanted))) if s]
    result["open_seconds"] = round(time.monotonic() - started, 2)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and sessions:
        chosen = random.sample(sessions, min(parallel, len(sessions)))
        await asyncio.gather(*(transfer(session) for session in chosen))
    for session in sessions:
        try:
            if (await command(session, "NOOP")).startswith("200"):
                result["alive_at_end"] += 1
            session[1].write(b"QUIT\r\n")
            await session[1].drain()
            session[1].close()
        except Exception as err:
            note(f"end: {type(err).__name__}: {err}")
    result["seconds"] = round(time.monotonic() - started, 2)


asyncio.run(main())
print(json.dumps(result))
