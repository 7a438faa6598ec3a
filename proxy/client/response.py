"""Response: what the client hands back, with its header fields and a body it may still be streaming.

This module owns the response as a caller sees it. It knows nothing of
sockets: the transport gives it a BodyStream to read the rest of the body from.
"""

from __future__ import annotations

import email.message
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..http1.headers import Headers


class BodyStream(Protocol):
    """The rest of a response body, as the transport delivers it."""

    def chunks(self, size: int) -> Iterator[bytes]: ...

    def release(self, clean: bool) -> None: ...


class ResponseHeaders(Headers):
    """Response header fields: in order, duplicates kept, looked up case-insensitively."""

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def items(self) -> list[tuple[str, str]]:
        return list(self)


@dataclass(eq=False)
class Response:
    """A response: status, headers in order, body bytes, final URL, and the redirects that led to it."""

    method: str
    url: str
    status: int
    reason: str
    version: str
    headers: ResponseHeaders
    history: list[Response] = field(default_factory=list)
    body: bytes = b""
    _stream: BodyStream | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.status < 400

    def iter_bytes(self, chunk_size: int = 65536) -> Iterator[bytes]:
        """The body in chunks as they arrive (decoded if the client decodes content)."""
        if self._stream is None:
            if self.body:
                yield self.body
            return
        for chunk in self._stream.chunks(chunk_size):
            if chunk:
                yield chunk

    __iter__ = iter_bytes

    def read(self, limit: int | None = None) -> bytes:
        """Read the rest of the body into ``body``; past ``limit`` bytes, stop and drop the connection."""
        if self._stream is None:
            return self.body
        parts, size = [self.body], len(self.body)
        for chunk in self.iter_bytes():
            parts.append(chunk)
            size += len(chunk)
            if limit is not None and size > limit:
                break
        self.body = b"".join(parts)
        self.close()
        return self.body

    def close(self) -> None:
        if self._stream is not None:
            self._stream.release(clean=False)  # a no-op once the body was read to its end
            self._stream = None

    def text(self, encoding: str | None = None) -> str:
        return self.body.decode(encoding or self.charset or "utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def charset(self) -> str | None:
        msg = email.message.Message()
        msg["Content-Type"] = self.headers.get("Content-Type") or ""
        return msg.get_content_charset()

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Response [{self.status} {self.reason}] {self.method} {self.url}>"
