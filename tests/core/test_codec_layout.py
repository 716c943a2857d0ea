"""The connection manager does not know the codec, a layout rule a build cannot check: only
the HTTP/1 codec's files read its parser state (H1Parser, the per-connection H1ServerConn /
H1ClientConn behind HConn.h1 and UpConn.h1) or write its framing (chunk lines, status and
request lines, Connection: close / keep-alive / upgrade). The connection manager, the
filter manager, the router filter, the pool and the filters see a codec through its
ServerCodecApi / ClientCodecApi and its events (docs/architecture.md, "The codec seam"), so
HTTP/2 plugs in as a second codec without touching them."""
from __future__ import annotations

import pathlib
import re

import pytest

import fastproxy

CORE = pathlib.Path(fastproxy.__file__).resolve().parent / "core"

# The codec's own files: its contract, parser, serializer, framing writer, server and client
# codecs, and its test/benchmark hooks (bench.pxi drives the parser for the micro-benchmarks).
CODEC_FILES = {"http/codec_h1_decls.pxi", "http/codec_h1.pxi", "http/codec_h1_writer.pxi",
               "http/codec_h1_framing.pxi", "http/codec_h1_server.pxi", "http/codec_h1_client.pxi",
               "http/codec_h1_testing.pxi", "bench.pxi"}

# Reading HTTP/1 parser state or writing HTTP/1 framing: the parser and its calls, its enums
# (states, framings, flags, errors), the codec state in the connections, the framing writers.
H1_STATE = re.compile(r"""\bH1Parser\b|\bh1_(?:feed|init|reset|free|body_skipped|response_for|head_take)\w*
                          |\bH1_(?:HEAD|BODY|MESSAGE|REQUEST|RESPONSE|ERROR)\w*|\bH1[FXE]_\w+
                          |\.h1\.|\bH1BodyWriter\b|\bh1_write_\w+|\b_append_(?:head|chunk|last_chunk)\w*
                          |["']transfer-encoding["']\s*\),\s*_cs\(["']chunked|HTTP/1\.1\ 100\ Continue""",
                      re.VERBOSE)


def h1_uses(text: str) -> list[tuple[int, str]]:
    return [(text.count("\n", 0, m.start()) + 1, m.group(0)) for m in H1_STATE.finditer(text)]


def core_files():
    return sorted(str(p.relative_to(CORE)) for p in CORE.rglob("*.pxi")
                  if str(p.relative_to(CORE)) not in CODEC_FILES)


@pytest.mark.parametrize("name", core_files())
def test_only_the_codec_reads_http1_state_or_writes_http1_framing(name):
    found = h1_uses((CORE / name).read_text())
    assert not found, f"core/{name} reaches into the HTTP/1 codec (line, text): {found}"


def test_the_rule_sees_what_it_forbids():
    # What the connection manager, router and pool did before the codec seam, each caught.
    for old in ("h1_init(&c.req, H1_REQUEST, h.max_head, 0, h.max_fields)", "c.req.state != H1_MESSAGE_DONE",
                "if c.req.flags & H1F_EXPECT_CONTINUE:", "p.framing == H1_BODY_LENGTH", "cdef H1Parser* p = &u.resp",
                "n = h1_feed_body(p, data, len, &off, &seg)", "_append_chunk(&c.out_buf, p, seg)",
                "_append_last_chunk(&u.out_buf, &p.trailers)", 'chain_append(&c.out_buf, "HTTP/1.1 100 Continue\\r\\n\\r\\n", 25)',
                '_pl_add(&l, _cs("transfer-encoding"), _cs("chunked"))', "c.h1.req.state", "h1_body_skipped(p, n)"):
        assert h1_uses(old), old
    # The codec-neutral seam is not HTTP/1 state.
    assert not h1_uses("c.codec.decode(c)") and not h1_uses("s.upstream.conn.codec.reusable(u)")
    assert not h1_uses('_pl_remove(&l, "transfer-encoding", 17)')
