"""Request limits that hold before the app sees a request: body size, deadline, queue.

A declared ``Content-Length`` over the limit is answered 413 at once; a body sent without
one (chunked) is counted as it arrives and cut off with 413 when it passes the limit
(:class:`BodySizeLimit`). :class:`RequestGuard` answers a request that takes too long (408
or 503) and turns predictions away with 503 and ``Retry-After`` when too many are queued.
"""

from __future__ import annotations

import asyncio
import json

from steel_defect.webapp.security import routed_path
from steel_defect.webapp.uploads import megabytes


class _TooLarge(Exception):
    pass


class BodySizeLimit:
    """ASGI middleware: 413 ``{"detail": ...}`` for request bodies over ``max_bytes``."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def _reject(self, send) -> None:
        detail = (
            f"request body is over the limit of {megabytes(self.max_bytes)}; send fewer "
            "or smaller files per request"
        )
        await _answer(send, 413, detail, [])

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(send)
        received, started, over = 0, False, False

        async def counting_receive():
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    over = True
                    raise _TooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            if over:  # the app caught _TooLarge (FastAPI's form parsing answers 400): 413 instead
                if not started:
                    started = True
                    await self._reject(send)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(send)


class RequestGuard:
    """ASGI middleware: a deadline for every request and a bound on queued predictions.

    A request not answered within ``timeout_s`` gets 408 when its body had not all arrived
    (a slow or stalled client) and 503 with ``Retry-After`` otherwise. An answer that has begun
    (a streamed export) runs on as long as each chunk follows the last within ``timeout_s``:
    its 200 is sent, so cutting it short would hand the client a file that looks whole. One
    that stalls longer is abandoned without its final chunk, which clients report as an
    incomplete transfer. A prediction already
    running finishes in the background (its batch holds the network), still counted as in
    progress until its thread ends, and its answer is dropped. A request to one of
    ``queued_paths`` while ``max_queued`` are in progress, the running one included, gets 503
    with ``Retry-After`` at once instead of waiting in line.
    """

    def __init__(self, app, timeout_s: float, max_queued: int, queued_paths=("/api/predict",)):
        self.app = app
        self.timeout_s = timeout_s
        self.max_queued = max_queued
        self.queued_paths = queued_paths
        self.in_progress = 0  # only touched on the event loop's thread
        self._abandoned: set[asyncio.Task] = set()  # answered already, still running: kept alive

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        queued = routed_path(scope) in self.queued_paths
        retry = str(max(1, round(self.timeout_s / 4)))
        if queued and self.in_progress >= self.max_queued:
            message = f"the server is busy ({self.in_progress} predictions in progress); retry in {retry} s"
            return await _answer(send, 503, message, [(b"retry-after", retry.encode())])
        state = {"started": False, "body_done": False, "abandoned": False, "sent": False}

        async def tracking_receive():
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                state["body_done"] = True
            return message

        async def guarded_send(message):
            if state["abandoned"]:
                return  # we answered already; the late result has nowhere to go
            state["started"] = state["started"] or message["type"] == "http.response.start"
            state["sent"] = True
            await send(message)

        task = asyncio.ensure_future(self.app(scope, tracking_receive, guarded_send))
        if queued:
            self.in_progress += 1
            task.add_done_callback(self._finished)
        done, _ = await asyncio.wait({task}, timeout=self.timeout_s)
        while not done and state["started"] and state["sent"]:
            state["sent"] = False  # a chunk went out in the last period: wait for the next one
            done, _ = await asyncio.wait({task}, timeout=self.timeout_s)
        if done:
            return task.result()
        if state["started"]:
            task.cancel()  # stalled half way through its answer: all we can do is stop
            raise RuntimeError(f"answer stalled for {self.timeout_s:g} s after it began; connection closed")
        state["abandoned"] = True
        if state["body_done"]:
            # The endpoint runs in a worker thread that cancelling would not stop: let the task
            # finish (its answer is dropped), so the request holds its queue slot until the
            # thread is done and slow requests cannot pile up beyond max_queued.
            self._abandoned.add(task)
            task.add_done_callback(self._abandoned.discard)
            message = f"not answered within {self.timeout_s:g} s; send fewer files per request"
            await _answer(send, 503, message, [(b"retry-after", retry.encode())])
        else:
            task.cancel()  # still reading the body: no thread has started, nothing else to wait for
            message = f"request body not received within {self.timeout_s:g} s"
            await _answer(send, 408, message, [(b"connection", b"close")])

    def _finished(self, task: asyncio.Task) -> None:
        self.in_progress -= 1
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log it as lost


async def _answer(send, status: int, detail: str, headers: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
