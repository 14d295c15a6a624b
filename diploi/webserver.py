"""How the web processes' connections write: at once, when nothing waits to be sent before.

Twisted (daphne's server) queues every write and sends it on the reactor's next pass. On the asyncio
reactor that is, per message and per connection: an epoll_ctl to watch the socket for writing, a
wake-up, the send, and an epoll_ctl to stop watching. A live event sent to 500 sockets paid that 500
times: a third of the web process's CPU for the event (bench/live.py, fan-out on one deployment).

`write_at_once()` makes a plain TCP connection with nothing queued send the bytes straight away; what
the kernel does not take is queued as before, and the reactor sends it when the socket can take more.
The order of the bytes and the flow control (pausing a producer on a full buffer) are unchanged.
"""

import sys


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
