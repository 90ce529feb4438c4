"""Server-Sent Events: an incremental text/event-stream decoder."""
from __future__ import annotations

import codecs
import re
from dataclasses import dataclass


@dataclass
class SSEEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None


_LINE = re.compile(r"\r\n|\r|\n")


class SSEDecoder:
    """Incremental text/event-stream parser (WHATWG rules): CR, LF or CRLF line
    ends (also split across chunks), comments, multi-line data, UTF-8 split
    across chunks, optional BOM. An unterminated event at EOF is dropped."""

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self._buf = ""
        self._start = True
        self._reset()

    def _reset(self) -> None:
        self._event: str = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        return self._text(self._utf8.decode(chunk))

    def close(self) -> list[SSEEvent]:
        tail = "\n" if self._buf.endswith("\r") else ""
        out = self._text(self._utf8.decode(b"", final=True) + tail)
        self._buf = ""
        return out

    def _text(self, text: str) -> list[SSEEvent]:
        if self._start and text:
            text, self._start = text.removeprefix("\ufeff"), False
        self._buf += text
        out: list[SSEEvent] = []
        pos = 0
        for m in _LINE.finditer(self._buf):
            if m.group() == "\r" and m.end() == len(self._buf):
                break  # may be the first half of a CRLF split across chunks
            ev = self._line(self._buf[pos:m.start()])
            if ev:
                out.append(ev)
            pos = m.end()
        self._buf = self._buf[pos:]
        return out

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            ev = (SSEEvent(self._event or "message", "\n".join(self._data), self._id)
                  if self._data else None)
            self._reset()
            return ev
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        return None
