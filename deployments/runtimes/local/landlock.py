"""Run a command with the network ports it may use restricted by Landlock (the kernel's own sandboxing
for unprivileged processes), then exec it: the last step inside a deployment's sandbox.

    python3 landlock.py --connect 80,443,41234 --bind 41234 -- /bin/sh -c '…'

TCP connections go only to the listed ports (its deployment's own services, and the usual ports of
the outside world), it listens only on its own ports, and — where the kernel has Landlock ABI 6 —
it can neither signal processes outside its sandbox nor reach abstract unix sockets outside it.
Standard library only: it runs under the machine's python3 inside the sandbox.
"""

import ctypes
import os
import struct
import sys

SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446
CREATE_RULESET_VERSION = 1
RULE_NET_PORT = 2
BIND_TCP, CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1
PR_SET_NO_NEW_PRIVS = 38

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def abi() -> int:
    """The kernel's Landlock ABI version (0: none)."""
    version = libc.syscall(SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(CREATE_RULESET_VERSION))
    return max(int(version), 0)


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"landlock {what}: {os.strerror(err)}")
    return result


def restrict(connect: set[int], bind: set[int]) -> None:
    version = abi()
    if version < 4:
        raise OSError(f"Landlock ABI {version} has no network rules (4 or later is needed)")
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if version >= 6 else 0
    attr = struct.pack("=QQQ", 0, BIND_TCP | CONNECT_TCP, scoped) if version >= 6 else struct.pack("=QQ", 0, BIND_TCP | CONNECT_TCP)
    buf = ctypes.create_string_buffer(attr, len(attr))
    fd = _check(libc.syscall(SYS_CREATE_RULESET, buf, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0)), "create_ruleset")
    for port in sorted(connect | bind):
        access = (CONNECT_TCP if port in connect else 0) | (BIND_TCP if port in bind else 0)
        rule = ctypes.create_string_buffer(struct.pack("=QQ", access, port), 16)
        _check(libc.syscall(SYS_ADD_RULE, ctypes.c_int(fd), ctypes.c_int(RULE_NET_PORT), rule, ctypes.c_uint32(0)), "add_rule")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    _check(libc.syscall(SYS_RESTRICT_SELF, ctypes.c_int(fd), ctypes.c_uint32(0)), "restrict_self")
    os.close(fd)


def ports(text: str) -> set[int]:
    return {int(p) for p in text.split(",") if p}


def main(argv: list[str]) -> None:
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1 :]
    values = dict(zip(options[::2], options[1::2], strict=True))
    restrict(ports(values.get("--connect", "")), ports(values.get("--bind", "")))
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
