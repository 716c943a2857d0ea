"""Fuzz target: the compiled HTTP/1.1 codec against its pure-Python twin.

Every input runs through both implementations (``fastproxy._testing``, the
core's hooks, and ``fastproxy._testing.http1_reference``), cut into the same pieces; their events must be equal, the
compiled one's must not depend on how the input was cut, and nothing may crash. The first
input byte chooses the set-up, the rest is the stream:

    bit 0     request (0) or response (1) parser
    bits 1-2  the request method a response answers: GET, HEAD, CONNECT, GET
    bit 3     tiny limits (max_head 256, max_start_line 64, max_fields 4)
    bit 4     end with EOF
    bits 5-6  one piece, byte by byte, or two kinds of pseudo-random cuts
    bit 7     the compiled parser moves each head out (h1_head_take) before reading it

Long run with atheris (libFuzzer flags pass through; a corpus directory is created and
seeded when missing):

    python tests/http/codec/fuzz_http1.py -max_total_time=3600 build/fuzz-http1-corpus

Without atheris, ``run_random`` does the same checks on seeded random mutations.
"""
from __future__ import annotations

import os
import pathlib
import random
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[3]      # tests/http/codec/ -> the repository
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

# atheris only when run as the fuzz target: the codec tests import this module for
# run_random and coalesce, and an imported atheris leaves objects LSan reports at exit.
atheris = None
if __name__ == "__main__":
    try:
        import atheris
    except ImportError:                                 # main() says so
        atheris = None

if atheris is not None and __name__ == "__main__":
    with atheris.instrument_imports():
        from fastproxy._testing import http1_reference as reference
else:
    from fastproxy._testing import http1_reference as reference
from fastproxy import _testing as compiled

METHODS = (b"GET", b"HEAD", b"CONNECT", b"GET")
TINY = {"max_head": 256, "max_start_line": 64, "max_fields": 4}


def coalesce(events):
    """Join adjacent data (and tunnel) events; drop empty ones (the codec tests use it too)."""
    out = []
    for ev in events:
        if ev[0] in ("data", "tunnel"):
            if not ev[1]:
                continue
            if out and out[-1][0] == ev[0]:
                out[-1] = (ev[0], out[-1][1] + ev[1])
                continue
        out.append(ev)
    return out


def cuts(mode: int, msg: bytes, rng: random.Random):
    if mode == 0 or len(msg) < 2:
        return [msg]
    if mode == 1:
        return [msg[i:i + 1] for i in range(len(msg))]
    k = rng.randint(1, 4) if mode == 2 else rng.randint(5, 40)
    points = sorted(rng.sample(range(1, len(msg)), min(k, len(msg) - 1)))
    return [msg[a:b] for a, b in zip([0, *points], [*points, len(msg)])]


def run(impl, kind, pieces, eof, **kw):
    p = impl.H1TestParser(kind, **kw)
    events = []
    for piece in pieces:
        events += p.feed(piece)
    if eof:
        events += p.feed_eof()
    return coalesce(events)


def one_input(data: bytes) -> None:
    if not data:
        return
    cfg, msg = data[0], data[1:]
    kind = "response" if cfg & 1 else "request"
    kw = {"request_method": METHODS[(cfg >> 1) & 3]}
    if cfg & 8:
        kw.update(TINY)
    eof = bool(cfg & 16)
    pieces = cuts((cfg >> 5) & 3, msg, random.Random(len(msg) * 256 + cfg))
    ours = run(compiled, kind, pieces, eof, take_heads=bool(cfg & 128), **kw)
    twin = run(reference, kind, pieces, eof, **kw)
    if ours != twin:
        raise AssertionError(f"compiled and reference differ on {data!r}:\n  {ours}\n  {twin}")
    whole = run(compiled, kind, [msg], eof, **kw)
    if whole != ours:
        raise AssertionError(f"the compiled codec depends on the cuts for {data!r}:\n  {whole}\n  {ours}")


# ---------------------------------------------------------------------------- seeds

SEEDS = [
    (0x00, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
    (0x20, b"\r\nGET /x?y HTTP/1.1\r\nHost: a.example:80\r\nAccept: */*\r\nConnection: keep-alive\r\n\r\n"
           b"GET http://a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n"),
    (0x40, b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello"),
    (0x60, b"PUT / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
           b"5;a=\"b\\\"c\" ; d\r\nhello\r\n0\r\nT: v\r\n\r\n"),
    (0x10, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.0\r\n\r\n"),
    (0x00, b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n\x16\x03\x01"),
    (0x00, b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x00"),
    (0x00, b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"),
    (0x08, b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n"),
    (0x01, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"),
    (0x11, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"3\r\nabc\r\n0\r\n\r\nHTTP/1.0 200 OK\r\n\r\nuntil eof"),
    (0x03, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"),
    (0x05, b"HTTP/1.1 200 Connection established\r\n\r\ntunnel"),
    (0x01, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\nPRI"),
    (0x31, b"HTTP/1.1 200\r\nTransfer-Encoding: chunked, gzip\r\n\r\nbody"),
]

DICTIONARY = [
    b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"\r\n", b"\r\n\r\n", b"\n", b"\r", b" ", b"\t", b":",
    b",", b";", b"=", b"\"", b"\\", b"#", b"*", b"/", b"?", b"@", b"[::1]", b":443", b"://",
    b"GET", b"HEAD", b"POST", b"CONNECT", b"OPTIONS", b"Host: ", b"Content-Length: ",
    b"Transfer-Encoding: ", b"chunked", b"gzip", b"identity", b"Connection: ", b"close",
    b"keep-alive", b"upgrade", b"Upgrade: ", b"Expect: ", b"100-continue", b"0\r\n\r\n",
    b"ffffffffffffffff", b"9223372036854775807", b"\x00", b"\x7f", b"\x80", b"\xff",
    b" 100 ", b" 101 ", b" 200 ", b" 204 ", b" 304 ",
]


def seed_corpus(directory: pathlib.Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    if any(directory.iterdir()):
        return
    for i, (cfg, msg) in enumerate(SEEDS):
        (directory / f"seed-{i:02d}").write_bytes(bytes([cfg]) + msg)


def write_dictionary(path: pathlib.Path) -> None:
    lines = []
    for token in DICTIONARY:
        lines.append('"' + "".join(f"\\x{b:02x}" for b in token) + '"')
    path.write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------- without atheris

def mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        i = rng.randrange(len(data) + 1)
        if op == 0 and data:
            data[min(i, len(data) - 1)] = rng.randrange(256)
        elif op == 1:
            data[i:i] = rng.choice(DICTIONARY)
        elif op == 2 and len(data) > 1:
            del data[min(i, len(data) - 1):min(i, len(data) - 1) + rng.randint(1, 8)]
        elif op == 3:
            j = rng.randrange(len(data) + 1)
            data[i:i] = data[j:j + rng.randint(1, 32)]
        elif data:
            data[0] = rng.randrange(256)
    return bytes(data)


def run_random(n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    pool = [bytes([cfg]) + msg for cfg, msg in SEEDS]
    for _ in range(n):
        data = mutate(rng, rng.choice(pool))
        one_input(data)
        if rng.random() < 0.05:
            pool.append(data)


def main(argv) -> None:
    if atheris is None:
        sys.exit("atheris is not installed (pip install atheris)")
    args = list(argv)
    corpora = [a for a in args[1:] if not a.startswith("-")]
    if not corpora:
        corpora = [tempfile.mkdtemp(prefix="fuzz-http1-")]
        args.append(corpora[0])
    for c in corpora:
        seed_corpus(pathlib.Path(c))
    if not any(a.startswith("-dict=") for a in args):
        fd, path = tempfile.mkstemp(prefix="http1-", suffix=".dict")
        os.close(fd)
        write_dictionary(pathlib.Path(path))
        args.append(f"-dict={path}")
    atheris.Setup(args, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
