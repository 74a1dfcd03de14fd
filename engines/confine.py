"""Defence in depth for a worker process: after start-up it opens nothing more.

A worker runs scripts other people wrote in a real engine. The engine's sandbox is the
first wall; this is the second, for a script that found a way through it (a bug in lupa
or quickjs): once the worker has imported everything and holds its pipe, it asks the
kernel to refuse it

- every file system access (Landlock: no file may be opened, read, written, executed or
  made, anywhere; descriptors already open, the pipe to the host, still work),
- TCP bind and connect (Landlock, ABI 4 on), signals to processes outside it and abstract
  Unix sockets (Landlock scopes, ABI 6 on),
- new processes and sockets (a seccomp filter: ``fork``, ``vfork``, a ``clone`` that is
  not a thread, ``clone3`` (C libraries then use ``clone``), ``execve``, ``execveat``,
  ``socket``, ``socketpair``: each fails with EPERM), and undoing the parent-death
  signal (``prctl(PR_SET_PDEATHSIG)``: the worker dies with its host) or a resource
  limit (``setrlimit``, ``prlimit64`` setting one: its address space stays bounded even
  with ``CAP_SYS_RESOURCE``, in a host run as root),

after ``prctl(PR_SET_NO_NEW_PRIVS)``, which both need and which keeps an ``exec`` from
gaining privileges. Each is used where the kernel offers it; what it does not offer is
said once on the ``polyspell`` logger at debug level, and the worker goes on (Linux on
x86-64 and arm64 has them all since 6.7; elsewhere nothing applies).

Threads stay allowed (a ``clone`` with ``CLONE_THREAD``): Python needs them.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import struct
import sys

logger = logging.getLogger("polyspell")

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

# Landlock (include/uapi/linux/landlock.h); the system call numbers are the same on every
# architecture that has them
LANDLOCK_CREATE_RULESET, LANDLOCK_RESTRICT_SELF = 444, 446
LANDLOCK_CREATE_RULESET_VERSION = 1
# every file system right of each ABI version (1: 13 rights; 2: REFER; 3: TRUNCATE;
# 5: IOCTL_DEV); with no rule added, each handled right is refused everywhere
_FS_RIGHTS = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
_NET_RIGHTS = 0b11  # BIND_TCP, CONNECT_TCP (ABI 4)
_SCOPES = 0b11  # ABSTRACT_UNIX_SOCKET, SIGNAL (ABI 6)

# seccomp: (audit arch, {system call: number}) of the architectures the filter knows
_SECCOMP_ARCH = {
    "x86_64": (0xC000003E, {"socket": 41, "socketpair": 53, "clone": 56, "fork": 57,
                            "vfork": 58, "execve": 59, "prctl": 157, "setrlimit": 160,
                            "prlimit64": 302, "execveat": 322, "clone3": 435}),
    "aarch64": (0xC00000B7, {"socket": 198, "socketpair": 199, "setrlimit": 164,
                             "prctl": 167, "clone": 220, "execve": 221, "prlimit64": 261,
                             "execveat": 281, "clone3": 435}),
}
CLONE_THREAD = 0x00010000
PR_SET_PDEATHSIG = 1
EPERM, ENOSYS = 1, 38
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
# classic BPF opcodes
_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JSET_K = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_RET_K = 0x06  # BPF_RET | BPF_K
X32_SYSCALL_BIT = 0x40000000  # x86-64's x32 system calls: the same arch, numbers above it


def settle() -> None:
    """Do now what running scripts would otherwise do on first use and needs files for:
    import pydantic and what building a model imports (one error variant's fields and the
    contexts' models, built lazily otherwise), and read this process's environment (the
    installed polyspell's version), so that :func:`confine` can follow.

    The other variants' models are still built when first used: once pydantic's own
    modules are in, building one opens no file (tested in a confined process), and
    building them all here would cost a worker's start 0.1 s more.
    """
    from bridge import SpellError, ToolError, context

    ToolError.ExecutionFailed.fields_model.model_rebuild()
    for model in vars(context).values():
        if isinstance(model, type) and issubclass(model, context._Model):
            model.model_rebuild()
    context.current_environment()
    try:
        SpellError.from_dict({"category": "tool"})  # a failed one, for its own imports
    except SpellError:
        pass


def confine() -> list[str]:
    """Confine this process for good, as far as the kernel allows: the walls applied
    (``no_new_privs``, ``landlock fs``, ``landlock net``, ``landlock scope``,
    ``seccomp``). Call it after every import and every file the process needs is open."""
    if sys.platform != "linux":
        logger.debug("polyspell worker: no confinement on %s (Linux only)", sys.platform)
        return []
    libc = ctypes.CDLL(None, use_errno=True)
    applied: list[str] = []
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        _missing("no_new_privs", ctypes.get_errno())
        return applied  # Landlock and seccomp both need it
    applied.append("no_new_privs")
    applied += _landlock(libc)
    if _seccomp(libc):
        applied.append("seccomp")
    return applied


def _missing(wall: str, errno: int) -> None:
    logger.debug("polyspell worker: %s not available (%s): going on without it", wall,
                 os.strerror(errno) if errno else "not offered")


def _landlock(libc: ctypes.CDLL) -> list[str]:
    syscall = libc.syscall
    syscall.restype = ctypes.c_long
    abi = syscall(LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
                  ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION))
    if abi < 1:
        _missing("landlock", ctypes.get_errno())
        return []
    fs = _FS_RIGHTS[max(v for v in _FS_RIGHTS if v <= abi)]
    net = _NET_RIGHTS if abi >= 4 else 0
    scoped = _SCOPES if abi >= 6 else 0
    # struct landlock_ruleset_attr grew with the ABI: give the size this ABI reads
    attr = struct.pack("<QQQ", fs, net, scoped)[:8 if abi < 4 else 16 if abi < 6 else 24]
    buffer = ctypes.create_string_buffer(attr, len(attr))
    ruleset = syscall(LANDLOCK_CREATE_RULESET, buffer, ctypes.c_size_t(len(attr)),
                      ctypes.c_uint32(0))
    if ruleset < 0:
        _missing("landlock", ctypes.get_errno())
        return []
    try:
        if syscall(LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            _missing("landlock", ctypes.get_errno())
            return []
    finally:
        os.close(ruleset)
    return ["landlock fs", *(["landlock net"] if net else []),
            *(["landlock scope"] if scoped else [])]


def _seccomp(libc: ctypes.CDLL) -> bool:
    machine = platform.machine()
    known = _SECCOMP_ARCH.get(machine)
    if known is None:
        _missing(f"seccomp (no filter for {machine})", 0)
        return False
    arch, numbers = known
    program = _filter(arch, numbers)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

    code = b"".join(struct.pack("<HBBI", *instruction) for instruction in program)
    fprog = SockFprog(len(program), code)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        _missing("seccomp", ctypes.get_errno())
        return False
    return True


def _filter(arch: int, numbers: dict[str, int]) -> list[tuple[int, int, int, int]]:
    """The classic BPF program: refuse the calls that make processes or sockets."""
    refuse = [numbers[name] for name in ("socket", "socketpair", "fork", "vfork", "execve",
                                         "execveat", "setrlimit") if name in numbers]
    deny = (_RET_K, 0, 0, SECCOMP_RET_ERRNO | EPERM)
    program: list[tuple[int, int, int, int]] = [
        (_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
        (_JEQ_K, 1, 0, arch),
        (_RET_K, 0, 0, SECCOMP_RET_ERRNO | EPERM),  # another ABI (x32, 32-bit): refused
        (_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
        (_JGE_K, 0, 1, X32_SYSCALL_BIT),
        (_RET_K, 0, 0, SECCOMP_RET_ERRNO | EPERM),  # an x32 call: refused
        # prctl(PR_SET_PDEATHSIG): refused, so that the kernel's kill at the host's death
        # stays asked for (a worker that cleared it would outlive a host killed with
        # SIGKILL); prctl's other options are allowed
        (_JEQ_K, 0, 4, numbers["prctl"]),
        (_LD_W_ABS, 0, 0, 16),  # the low half of prctl's option (args[0])
        (_JEQ_K, 0, 1, PR_SET_PDEATHSIG),
        deny,
        (_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        # prlimit64 with a new limit (args[2] not NULL): refused, as setrlimit is, so that
        # the address-space bound stays even for a worker that holds CAP_SYS_RESOURCE (a
        # host run as root); reading a limit (NULL) is allowed
        (_JEQ_K, 0, 6, numbers["prlimit64"]),
        (_LD_W_ABS, 0, 0, 32),  # args[2], low half
        (_JEQ_K, 0, 2, 0),
        (_LD_W_ABS, 0, 0, 36),  # args[2], high half
        (_JEQ_K, 1, 0, 0),
        deny,
        (_RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ]
    # clone3 gets ENOSYS, so that a C library falls back to clone, which is checked here
    tail = [
        (_JEQ_K, 0, 1, numbers["clone3"]),
        (_RET_K, 0, 0, SECCOMP_RET_ERRNO | ENOSYS),
        (_JEQ_K, 0, 3, numbers["clone"]),
        (_LD_W_ABS, 0, 0, 16),  # the low half of clone's flags (args[0])
        (_JSET_K, 1, 0, CLONE_THREAD),  # a thread: allowed
        deny,
        (_RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ]
    for index, number in enumerate(refuse):
        # jump to ``deny`` (after the rest of this list and the tail's first five)
        to_deny = len(refuse) - index - 1 + 5
        program.append((_JEQ_K, to_deny, 0, number))
    return program + tail
