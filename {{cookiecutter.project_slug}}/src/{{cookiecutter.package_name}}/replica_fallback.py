"""Reads a replica could not serve run again on the primary: read-your-writes, and no error
when a replica fails.

A replica replays the primary's writes a moment later (its lag). So a ``GET`` that reads
a row a client has just written may find nothing there: an item created by ``POST
/items`` a millisecond ago is a 404 on the replica. And a replica can fail under a read
(it stopped, it cancelled the read to replay WAL). In both cases this ASGI middleware
holds the replica's answer back and runs the request once more, on the primary
(``READ_FROM_PRIMARY`` in the scope makes ``ReadSessionDep`` take the primary's pool),
and sends the primary's answer instead; when the primary fails too, a held 404 is sent
as it was.

It runs again only ``GET`` and ``HEAD`` requests whose read session was on a replica,
and only when they answered 404, or failed (a 5xx, or an error no handler answered)
after a database error on the replica: such a request only reads (``ReadSessionDep``
refuses to write), so running it twice is safe.
Every other response passes straight through, unbuffered. What it costs: a 404 from a
replica is confirmed on the primary (one more read there).
"""

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .replicas import READ_FROM_PRIMARY

# Requests a read session serves and that may run twice.
READ_METHODS = ("GET", "HEAD")


class ReplicaFallback:
    """ASGI middleware: see the module's docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in READ_METHODS:
            await self.app(scope, receive, send)
            return
        # The scope as the request came, for a second run: the first one adds to it (the
        # route, which middleware outside reads too, and the session taken, in "state").
        arrived = dict(scope, state=dict(scope.get("state", {})))
        requested: list[Message] = []  # the request's body, to give the second run
        held: list[Message] = []

        async def receive_and_keep() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                requested.append(message)
            return message

        async def send_or_hold(message: Message) -> None:
            if message["type"] == "http.response.start":
                if replica_could_not_serve(scope.get("state", {}), message["status"]):
                    held.append(message)
                    return
            elif held:
                held.append(message)
                return
            await send(message)

        try:
            await self.app(scope, receive_and_keep, send_or_hold)
        except Exception:
            # An error no handler answered (a table the replica has not replayed yet):
            # nothing was sent, so the primary may answer instead; if it fails too, its
            # error goes on (a 500).
            state = scope.get("state", {})
            if held or state.get("read_replica") is None or not state.get("replica_failed"):
                raise
            await self._again_on_the_primary(arrived, receive, send, requested, held=[])
            return
        if held:
            await self._again_on_the_primary(arrived, receive, send, requested, held)

    async def _again_on_the_primary(
        self,
        arrived: Scope,
        receive: Receive,
        send: Send,
        requested: list[Message],
        held: list[Message],
    ) -> None:
        replayed = list(requested)

        async def receive_again() -> Message:
            if replayed:
                return replayed.pop(0)
            return await receive()  # nothing more was sent: wait for the disconnect

        primary_failed = False
        replica_404 = bool(held) and held[0]["status"] == 404
        second: list[Message] = []

        async def send_second(message: Message) -> None:
            nonlocal primary_failed
            if message["type"] == "http.response.start" and replica_404:
                primary_failed = message["status"] >= 500
            if primary_failed:
                second.append(message)  # dropped: the replica's 404 goes instead
                return
            await send(message)

        second_scope = dict(arrived, state=dict(arrived["state"]))
        second_scope[READ_FROM_PRIMARY] = True
        await self.app(second_scope, receive_again, send_second)
        if primary_failed:
            for message in held:
                await send(message)


def replica_could_not_serve(state: dict[str, Any], status: int) -> bool:
    """Whether a response is one to run again on the primary: from a read on a replica,
    a 404 (the replica may not have replayed the write yet) or a 5xx after the replica
    failed (replicas.py marked it down)."""
    if state.get("read_replica") is None:
        return False
    return status == 404 or (status >= 500 and bool(state.get("replica_failed")))
