"""How the web processes' connections write: at once, when nothing waits to be sent before.

Twisted (daphne's server) queues every write and sends it on the reactor's next pass. On the asyncio
reactor that is, per message and per connection: an epoll_ctl to watch the socket for writing, a
wake-up, the send, and an epoll_ctl to stop watching. A live event sent to 500 sockets paid that 500
times: a third of the web process's CPU for the event (bench/live.py, fan-out on one deployment).

`write_at_once()` makes a plain TCP connection with nothing queued send the bytes straight away; what
the kernel does not take is queued as before, and the reactor sends it when the socket can take more.
The order of the bytes and the flow control (pausing a producer on a full buffer) are unchanged.

`Broadcast` frames a live fragment once and writes it to each of the process's websockets that get it.
"""

import sys
from functools import partial


def write_at_once() -> bool:
    """Applies to this process's Twisted, if it runs one (daphne imports it before the application);
    True when connections now write at once."""
    if "twisted.internet.tcp" not in sys.modules:
        return False
    from twisted.internet import abstract, tcp

    queued = abstract.FileDescriptor.write
    if getattr(queued, "at_once", False):
        return True

    def write(self: abstract.FileDescriptor, data: bytes) -> None:
        idle = not self.dataBuffer and not self._tempDataBuffer
        if idle and data and isinstance(self, tcp.Connection) and not self.TLS and self.connected and not self._writeDisconnected:
            sent = self.writeSomeData(data)  # bytes the kernel took (0 when it takes none), or the error
            if isinstance(sent, int) and sent > 0:
                if sent == len(data):
                    return
                data = data[sent:]
        queued(self, data)  # an error is met again on the reactor's pass, which closes the connection

    write.at_once = True
    abstract.FileDescriptor.write = write
    return True


CONNECTION = "diploi.connection"  # the scope's key for daphne's websocket connection (see with_connection)


def with_connection(application):
    """The outermost ASGI layer for websockets: when daphne serves the socket, its connection goes in the
    scope, for `Broadcast` to write to. Daphne hands each application instance its connection's reply
    method as `send` (a partial of `Server.handle_reply` on the connection); any other server leaves
    the scope as it is, and messages go through `send` as usual."""

    async def app(scope, receive, send):
        protocol = send.args[0] if isinstance(send, partial) and send.args else None
        if scope["type"] == "websocket" and hasattr(protocol, "sendPreparedMessage"):
            scope = {**scope, CONNECTION: protocol}
        return await application(scope, receive, send)

    return app


class Broadcast:
    """One text message for many websockets of this process, framed once (autobahn's prepared
    message) and written to each daphne connection directly.

    Through the ASGI send, every socket paid for the same work again: Channels' and the session's
    send wrappers, daphne's reply dispatch and logging, and autobahn encoding and framing the
    payload. The frame goes to the transport itself when autobahn has nothing queued and compresses
    nothing (daphne offers no compression): autobahn's own `sendData` formats a debug line and counts
    traffic on every write, a fifth of the time of an event to 500 sockets."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.frame = None

    def send_to(self, scope: dict) -> bool:
        """Written to (or, closed, dropped for) the scope's connection; False when the scope has none."""
        protocol = scope.get(CONNECTION)
        if protocol is None:
            return False
        if protocol.state == protocol.STATE_OPEN:  # a closing connection drops it, as daphne's reply would
            if self.frame is None:
                self.frame = protocol.factory.prepareMessage(self.text.encode())
            if protocol._perMessageCompress is None and not protocol.send_queue:
                protocol.transport.write(self.frame.payloadHybi)
            else:
                protocol.sendPreparedMessage(self.frame)
        return True
