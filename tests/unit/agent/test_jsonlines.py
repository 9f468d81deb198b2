"""Docker attach-stream demultiplexing and bounded line splitting, under arbitrary chunkings."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.runtime.jsonlines import STDERR, STDOUT, FrameError, LineSplitter, StreamDemuxer


def frame(stream: int, data: bytes) -> bytes:
    return struct.pack(">BxxxI", stream, len(data)) + data


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


frames_st = st.lists(st.tuples(st.sampled_from([0, STDOUT, STDERR]), st.binary(max_size=40)), max_size=12)


@given(frames_st, st.lists(st.integers(min_value=0, max_value=10_000), max_size=20))
def test_demuxer_is_chunking_invariant(frames: list[tuple[int, bytes]], cuts: list[int]) -> None:
    stream = b"".join(frame(s, d) for s, d in frames)
    demux = StreamDemuxer()
    out = [pair for chunk in chunked(stream, cuts) for pair in demux.feed(chunk)]
    assert out == frames


def test_demuxer_byte_by_byte_and_partial_tail() -> None:
    data = frame(STDOUT, b"hello\n") + frame(STDERR, b"log") + frame(STDOUT, b"")
    demux = StreamDemuxer()
    out = [pair for i in range(len(data)) for pair in demux.feed(data[i : i + 1])]
    assert out == [(STDOUT, b"hello\n"), (STDERR, b"log"), (STDOUT, b"")]
    # Half a frame yields nothing until the rest arrives.
    whole = frame(STDOUT, b"abcdef")
    assert list(demux.feed(whole[:10])) == []
    assert list(demux.feed(whole[10:])) == [(STDOUT, b"abcdef")]


@pytest.mark.parametrize("stream_id", [3, 7, 255])
def test_demuxer_bad_stream_id(stream_id: int) -> None:
    demux = StreamDemuxer()
    with pytest.raises(FrameError, match=f"unknown stream id {stream_id}"):
        list(demux.feed(frame(STDOUT, b"ok") + frame(stream_id, b"x")))


def test_demuxer_bad_stream_id_in_header_alone() -> None:
    # The header is enough to know the stream is corrupt; no need to wait for the (possibly huge) body.
    with pytest.raises(FrameError):
        list(StreamDemuxer().feed(struct.pack(">BxxxI", 9, 1 << 30)))


def reference_lines(data: bytes, max_line: int) -> list[bytes]:
    """Complete non-empty lines; an overlong one (complete or not) as b""."""
    *complete, tail = data.split(b"\n")
    out = [b"" if len(line) > max_line else line for line in complete if line]
    if len(tail) > max_line:
        out.append(b"")
    return out


lines_st = st.lists(
    st.one_of(st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"")), st.just(b""), st.just(b"x" * 30)),
    max_size=15,
)


@given(
    lines_st,
    st.booleans(),
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=25),
    st.integers(min_value=1, max_value=16),
)
@settings(max_examples=300)
def test_splitter_is_chunking_invariant(
    lines: list[bytes], trailing_newline: bool, cuts: list[int], max_line: int
) -> None:
    data = b"\n".join(lines) + (b"\n" if trailing_newline else b"")
    splitter = LineSplitter(max_line)
    out = []
    for chunk in chunked(data, cuts):
        out.extend(splitter.feed(chunk))
        assert len(splitter._buf) <= max_line
    assert out == reference_lines(data, max_line)
    assert splitter.overlong == out.count(b"")


def test_splitter_basic() -> None:
    s = LineSplitter(100)
    assert s.feed(b'{"a":1}\n{"b"') == [b'{"a":1}']
    assert s.feed(b":2}\n\n") == [b'{"b":2}']  # an empty line is skipped, never confused with the overlong marker
    assert s.feed(b"tail") == []
    assert s.feed(b"\n") == [b"tail"]
    assert s.overlong == 0


def test_exact_max_is_not_overlong() -> None:
    s = LineSplitter(4)
    assert s.feed(b"abcd\nab") == [b"abcd"]
    assert s.feed(b"cd\nabcde\n") == [b"abcd", b""]
    assert s.overlong == 1


def test_endless_line_is_bounded_and_reported_once() -> None:
    max_line, chunk = 1000, 256
    s = LineSplitter(max_line)
    out: list[bytes] = []
    for _ in range(2000):  # ~500 kB of one line, never terminated
        out.extend(s.feed(b"y" * chunk))
        assert len(s._buf) <= max_line + chunk
    assert out == [b""]
    assert s.overlong == 1
    # The newline ends the overlong line; the lines after it come out untouched.
    assert s.feed(b"yyy\nnext\nafter") == [b"next"]
    assert s.feed(b"\n") == [b"after"]
    assert s.overlong == 1


def test_overlong_inside_one_chunk_then_more_lines() -> None:
    s = LineSplitter(5)
    assert s.feed(b"ok\n" + b"z" * 50 + b"\nfine\n") == [b"ok", b"", b"fine"]
    assert s.overlong == 1
