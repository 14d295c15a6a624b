"""The last step inside a deployment's sandbox: restrict what the command may ask of the kernel, then
exec it.

    python3 -I -S inside.py [--env FILE] [--connect 80,443,41234 --bind 41234] [--inet tcp] -- /bin/sh -c '…'
    python3 -I -S inside.py --podman yes --connect … --bind '' -- slirp4netns …

With `--podman yes` (containers.py: the network of a deployment's containers, slirp4netns, which podman
starts as the deployment's uid) only the Landlock port rules apply: slirp4netns makes namespaces of its
own. What the containers connect to leaves through it: they reach the machine's loopback only on their
own deployment's ports, and the outside world on DIPLOI_OUTBOUND_PORTS.

- seccomp (always): no new namespaces (so no `unshare -Ur` root of its own), no mounts, no kernel
  keyrings, bpf, perf events, modules, kexec, swap, clock or reboot; what Docker's default profile
  refuses a container, as a filter built here (no libseccomp needed). With `--inet tcp`, an internet
  socket can only be TCP: no UDP (so no UDP port of any number bound; names resolve over TCP, which
  the sandbox's resolv.conf asks for), no SCTP or MPTCP, which Landlock's TCP rules do not cover.
- Landlock (with --connect/--bind): TCP connections go only to the listed ports (its deployment's own
  services, and the usual ports of the outside world), it listens only on its own ports, and — where
  the kernel has Landlock ABI 6 — it can neither signal processes outside its sandbox nor reach
  abstract unix sockets outside it.
Standard library only: it runs under the machine's python3 inside the sandbox.
"""

import ctypes
import errno
import json
import os
import platform
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


def restrict(connect: set[int], bind: set[int], scope: bool = True) -> None:
    version = abi()
    if version < 4:
        raise OSError(f"Landlock ABI {version} has no network rules (4 or later is needed)")
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if version >= 6 and scope else 0
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


# --- seccomp ---------------------------------------------------------------------------------------

PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
RET_ALLOW, RET_KILL_PROCESS = 0x7FFF0000, 0x80000000
LD_ABS_W, JEQ_K, JSET_K, JGE_K, AND_K, RET_K = 0x20, 0x15, 0x45, 0x35, 0x54, 0x06
AF_INET, AF_INET6, SOCK_STREAM, SOCK_TYPE_MASK, IPPROTO_TCP = 2, 10, 1, 0xF, 6
# Every flag of clone() that makes a namespace (user, mount, PID, network, UTS, IPC, cgroup).
CLONE_NEW = 0x10000000 | 0x00020000 | 0x20000000 | 0x40000000 | 0x04000000 | 0x08000000 | 0x02000000
X32_BIT = 0x40000000

# Per architecture: its audit value and the numbers of clone, clone3 and what is refused (EPERM).
SYSCALLS = {
    "x86_64": (
        0xC000003E,
        dict(
            clone=56,
            clone3=435,
            socket=41,
            unshare=272,
            setns=308,
            mount=165,
            umount2=166,
            pivot_root=155,
            fsopen=430,
            fsconfig=431,
            fsmount=432,
            move_mount=429,
            open_tree=428,
            mount_setattr=442,
            keyctl=250,
            add_key=248,
            request_key=249,
            bpf=321,
            perf_event_open=298,
            userfaultfd=323,
            open_by_handle_at=304,
            name_to_handle_at=303,
            init_module=175,
            finit_module=313,
            delete_module=176,
            kexec_load=246,
            kexec_file_load=320,
            swapon=167,
            swapoff=168,
            reboot=169,
            acct=163,
            settimeofday=164,
            clock_settime=227,
            syslog=103,
            quotactl=179,
            io_uring_setup=425,
            io_uring_enter=426,
            io_uring_register=427,
        ),
    ),
    "aarch64": (
        0xC00000B7,
        dict(
            clone=220,
            clone3=435,
            socket=198,
            unshare=97,
            setns=268,
            mount=40,
            umount2=39,
            pivot_root=41,
            fsopen=430,
            fsconfig=431,
            fsmount=432,
            move_mount=429,
            open_tree=428,
            mount_setattr=442,
            keyctl=219,
            add_key=217,
            request_key=218,
            bpf=280,
            perf_event_open=241,
            userfaultfd=282,
            open_by_handle_at=265,
            name_to_handle_at=264,
            init_module=105,
            finit_module=273,
            delete_module=106,
            kexec_load=104,
            kexec_file_load=294,
            swapon=224,
            swapoff=225,
            reboot=142,
            acct=89,
            settimeofday=170,
            clock_settime=112,
            syslog=116,
            quotactl=60,
            io_uring_setup=425,
            io_uring_enter=426,
            io_uring_register=427,
        ),
    ),
}


REFUSED = [name for name in SYSCALLS["x86_64"][1] if name not in ("clone", "clone3", "socket")]


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def seccomp_program(machine: str, tcp_only: bool = False) -> bytes:
    """The filter for `machine` (platform.machine()): a classic BPF program over seccomp_data (its
    syscall number at 0, its architecture at 4, its arguments' low words at 16, 24, 32…)."""
    arch, numbers = SYSCALLS[machine]
    eperm = RET_K, 0x00050000 | errno.EPERM
    eacces = RET_K, 0x00050000 | errno.EACCES
    prog = [_insn(LD_ABS_W, 4), _insn(JEQ_K, arch, 1, 0), _insn(RET_K, RET_KILL_PROCESS), _insn(LD_ABS_W, 0)]
    if machine == "x86_64":  # the x32 calling convention: none of its numbers are checked below
        prog += [_insn(JGE_K, X32_BIT, 0, 1), _insn(*eperm)]
    for name in REFUSED:
        prog += [_insn(JEQ_K, numbers[name], 0, 1), _insn(*eperm)]
    if tcp_only:  # socket(domain, type, protocol): an internet socket only of TCP
        prog += [
            _insn(JEQ_K, numbers["socket"], 0, 11),
            _insn(LD_ABS_W, 16),
            _insn(JEQ_K, AF_INET, 1, 0),
            _insn(JEQ_K, AF_INET6, 0, 7),  # another family (unix…): allowed
            _insn(LD_ABS_W, 24),
            _insn(AND_K, SOCK_TYPE_MASK),  # without SOCK_NONBLOCK / SOCK_CLOEXEC
            _insn(JEQ_K, SOCK_STREAM, 0, 3),
            _insn(LD_ABS_W, 32),
            _insn(JEQ_K, 0, 2, 0),
            _insn(JEQ_K, IPPROTO_TCP, 1, 0),
            _insn(*eacces),
            _insn(RET_K, RET_ALLOW),
        ]
    # clone3 passes its flags in memory, which a filter cannot read: "not implemented" makes the C
    # library fall back to clone, whose flags are checked.
    prog += [_insn(JEQ_K, numbers["clone3"], 0, 1), _insn(RET_K, 0x00050000 | errno.ENOSYS)]
    prog += [_insn(JEQ_K, numbers["clone"], 1, 0), _insn(RET_K, RET_ALLOW)]
    prog += [_insn(LD_ABS_W, 16), _insn(JSET_K, CLONE_NEW, 0, 1), _insn(*eperm), _insn(RET_K, RET_ALLOW)]
    return b"".join(prog)


class _Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def seccomp(tcp_only: bool) -> None:
    machine = platform.machine()
    if machine not in SYSCALLS:
        raise OSError(f"no seccomp filter for {machine}")
    program = seccomp_program(machine, tcp_only)
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = _Fprog(len(program) // 8, ctypes.addressof(buf))
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    _check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "seccomp")


def ports(text: str) -> set[int]:
    return {int(p) for p in text.split(",") if p}


def main(argv: list[str]) -> None:
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1 :]
    values = dict(zip(options[::2], options[1::2], strict=True))
    env = dict(os.environ)
    if "--env" in values:  # the deployment's own environment, only for its command (see sandbox.OUTER_ENV)
        with open(values["--env"]) as f:
            env = json.load(f)
    containers = values.get("--podman") == "yes"  # slirp4netns: it makes namespaces of its own
    if "--connect" in values:
        restrict(ports(values["--connect"]), ports(values.get("--bind", "")), scope=not containers)
    if not containers:
        seccomp(values.get("--inet") == "tcp")
    os.execvpe(command[0], command, env)


if __name__ == "__main__":
    main(sys.argv[1:])
