"""Framing of a handler's output: Docker's multiplexed attach stream, then newline-delimited lines.

Without a TTY, Docker prefixes every chunk of stdout/stderr with an 8-byte header: one byte for the stream
(1 stdout, 2 stderr), three zero bytes, and the chunk's length as a 4-byte big-endian integer.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

STDOUT, STDERR = 1, 2
_HEADER = struct.Struct(">BxxxI")


class FrameError(ValueError):
    """The attach stream does not follow Docker's framing."""


class StreamDemuxer:
    """Incremental demultiplexer: feed raw bytes, get ``(stream, chunk)`` pairs."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        self._buf += data
        buf = self._buf
        pos = 0
        while len(buf) - pos >= 8:
            stream, size = _HEADER.unpack_from(buf, pos)
            if stream not in (0, STDOUT, STDERR):
                raise FrameError(f"unknown stream id {stream} in attach stream")
            if len(buf) - pos - 8 < size:
                break
            yield stream, bytes(buf[pos + 8 : pos + 8 + size])
            pos += 8 + size
        del buf[:pos]


class LineSplitter:
    """Incremental line splitter with a bound: a line longer than ``max_line`` is cut off and reported."""

    def __init__(self, max_line: int) -> None:
        self._max = max_line
        self._buf = bytearray()
        self._discarding = False
        self.overlong = 0

    def feed(self, data: bytes) -> list[bytes]:
        """Complete non-empty lines in ``data`` (no newline); an overlong line yields ``b""`` once, then is skipped."""
        lines: list[bytes] = []
        start = 0
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                break
            if self._discarding:
                self._discarding = False
            elif self._buf:
                self._buf += data[start:nl]
                if len(self._buf) > self._max:
                    self.overlong += 1
                    lines.append(b"")
                else:
                    lines.append(bytes(self._buf))
                self._buf.clear()
            elif nl - start > self._max:
                self.overlong += 1
                lines.append(b"")
            elif nl > start:
                # An empty line is skipped: b"" is the overlong marker, and readers treat it as one.
                lines.append(data[start:nl])
            start = nl + 1
        rest = len(data) - start
        if rest and not self._discarding:
            if len(self._buf) + rest > self._max:
                # An endless line must not grow memory: drop it and everything up to its newline.
                self._buf.clear()
                self._discarding = True
                self.overlong += 1
                lines.append(b"")
            else:
                self._buf += data[start:]
        return lines
