"""A pure-ASGI guard in front of the app: body size, body time, the headers that frame a body.

Why each rule:

- A body over the limit gets 413 *after* the client has finished sending it (read and thrown
  away, up to ``drain`` bytes). Answering first and closing at once makes the kernel reset the
  connection while the client is still writing, and clients that write the whole body before
  reading (urllib, requests) then see ``ConnectionResetError`` instead of the 413. A client that
  asked ``Expect: 100-continue`` (curl does for large bodies) has sent nothing yet: it is answered
  at once. Bodies declared over ``drain`` bytes are answered at once too (they would cost too much
  to read); such a client may see a reset.
- A body that has not fully arrived ``body_timeout`` seconds after the request started gets 408
  and the connection is closed (a slow client would otherwise hold a connection and its buffer
  forever; uvicorn has no body timeout of its own).
- ``Content-Encoding`` other than identity is refused (415): nothing decompresses request bodies
  here, and doing so would open the door to decompression bombs.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

MAX_BODY_BYTES = 5 * 1024 * 1024
DRAIN_BYTES = 64 * 1024 * 1024
BODY_TIMEOUT = 20.0


class BodyAbort(Exception):  # noqa: N818 - a signal, not an error of the app
    """Raised from ``receive`` when the body must not be read further; the guard answers."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


def _reply_messages(status: int, error: str, detail: str, close: bool) -> tuple[dict, dict]:
    body = json.dumps({"error": error, "detail": detail}, separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    return ({"type": "http.response.start", "status": status, "headers": headers},
            {"type": "http.response.body", "body": body})


class HttpGuard:
    """Wraps an ASGI app with the rules of the module docstring."""

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES, drain: int = DRAIN_BYTES,
                 body_timeout: float = BODY_TIMEOUT) -> None:
        self.app, self.limit, self.drain, self.body_timeout = app, limit, max(drain, limit), body_timeout
        mb = limit / 2**20
        self._too_large = f"The request body is over the {mb:g} MB limit; send a smaller image."

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared: int | None = None
        expects_continue = False
        for key, value in scope["headers"]:
            if key == b"content-length":
                # int() would take " 5", "+5" and "5_0"; HTTP allows digits only.
                if not value.isdigit() or (declared is not None and int(value) != declared):
                    await self._reply(send, 400, "bad_content_length",
                                      "The Content-Length header is not one non-negative whole number.", True)
                    return
                declared = int(value)
            elif key == b"content-encoding" and value.strip().lower() not in (b"", b"identity"):
                await self._reply(send, 415, "unsupported_encoding", "Compressed request bodies "
                                  f"(Content-Encoding: {value.decode('latin-1')}) are not accepted; send it as is.",
                                  True)
                return
            elif key == b"expect" and value.lower() == b"100-continue":
                expects_continue = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        if declared is not None and declared > self.limit:
            # Read and discard what the client is sending, so that it reads the 413 (see the docstring).
            if not expects_continue and declared <= self.drain:
                await self._discard(receive, deadline, 0)
            await self._reply(send, 413, "body_too_large", self._too_large, True)
            return

        received = 0
        started = False
        finished = declared == 0

        async def guarded_receive() -> dict:
            nonlocal received, finished
            if finished:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyAbort(408, "body_timeout", f"The request body did not arrive within {self.body_timeout:g} "
                                "seconds; send it faster or in a smaller file.") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                finished = not message.get("more_body", False)
                if received > self.limit:
                    raise BodyAbort(413, "body_too_large", self._too_large)
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, tracking_send)
        except BodyAbort as abort:
            if started:
                raise
            # The rest of an over-long body is read away; once its last part has come, a further
            # receive() would wait for the client to hang up, which it does only after our answer.
            if abort.status == 413 and not finished:
                await self._discard(receive, deadline, received)
            await self._reply(send, abort.status, abort.error, abort.detail, True)

    async def _discard(self, receive: Any, deadline: float, received: int) -> None:
        """Read the rest of the body and throw it away, until its end, ``drain`` bytes or the deadline."""
        try:
            async with asyncio.timeout_at(deadline):
                while received <= self.drain:
                    message = await receive()
                    if message["type"] != "http.request":
                        return
                    received += len(message.get("body", b""))
                    if not message.get("more_body", False):
                        return
        except TimeoutError:
            return

    @staticmethod
    async def _reply(send: Any, status: int, error: str, detail: str, close: bool) -> None:
        start, body = _reply_messages(status, error, detail, close)
        await send(start)
        await send(body)
