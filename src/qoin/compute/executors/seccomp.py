"""The sandbox's seccomp filter: a classic BPF program, assembled here, that bubblewrap installs
(``--seccomp FD``) just before it executes the job's command.

The program (x86-64 and aarch64; another architecture has no filter, and the sandbox says so):

1. the architecture in ``seccomp_data.arch`` must be the machine's own, else the process is
   killed (a 32-bit or x32 system call would bypass the numbers below);
2. x86-64: system call numbers with the x32 bit (``0x40000000``) are refused;
3. ``clone`` with any namespace flag (``CLONE_NEW*``) fails with ``EPERM``; ``clone3`` fails
   with ``ENOSYS`` (its flags are in memory a filter cannot read; the C library then falls back
   to ``clone``);
4. the calls of :data:`DENIED` fail with ``EPERM``: what changes the kernel, the mounts, the
   namespaces, other processes' memory, keys, or opens files by handle;
5. everything else is allowed (the sandbox's namespaces, read-only mounts, dropped capabilities
   and limits do the rest).
"""

from __future__ import annotations

import errno
import platform
import struct
from dataclasses import dataclass

from qoin.errors import QoinError

# Classic BPF opcodes (linux/bpf_common.h) and seccomp return values (linux/seccomp.h).
BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_JGE_K = 0x35
BPF_JSET_K = 0x45
BPF_RET_K = 0x06
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
OFFSET_NR = 0
OFFSET_ARCH = 4
OFFSET_ARG0_LOW = 16
"""``args[0]``'s low 32 bits (little-endian machines only: both supported ones are)."""
X32_BIT = 0x40000000
CLONE_NAMESPACES = (
    0x00000080  # CLONE_NEWTIME
    | 0x00020000  # CLONE_NEWNS
    | 0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
)
MAX_JUMP = 255

DENIED = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "mount_setattr",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "unshare",
    "setns",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "bpf",
    "perf_event_open",
    "keyctl",
    "add_key",
    "request_key",
    "userfaultfd",
    "open_by_handle_at",
    "name_to_handle_at",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "syslog",
    "acct",
    "swapon",
    "swapoff",
    "reboot",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "quotactl",
    "vhangup",
    "sethostname",
    "setdomainname",
    "fanotify_init",
    "iopl",
    "ioperm",
    "uselib",
    "lookup_dcookie",
)
"""System calls that fail with ``EPERM`` (those an architecture lacks are left out)."""


@dataclass(frozen=True)
class Arch:
    """An architecture's audit value and system call numbers."""

    audit: int
    numbers: dict[str, int]
    x32: bool = False


# fmt: off
_X86_64_NUMBERS = {
    "clone": 56, "clone3": 435, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
    "kcmp": 312, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161,
    "mount_setattr": 442, "move_mount": 429, "open_tree": 428, "fsopen": 430, "fsconfig": 431,
    "fsmount": 432, "fspick": 433, "unshare": 272, "setns": 308, "kexec_load": 246,
    "kexec_file_load": 320, "init_module": 175, "finit_module": 313, "delete_module": 176,
    "bpf": 321, "perf_event_open": 298, "keyctl": 250, "add_key": 248, "request_key": 249,
    "userfaultfd": 323, "open_by_handle_at": 304, "name_to_handle_at": 303, "io_uring_setup": 425,
    "io_uring_enter": 426, "io_uring_register": 427, "syslog": 103, "acct": 163, "swapon": 167,
    "swapoff": 168, "reboot": 169, "settimeofday": 164, "clock_settime": 227, "clock_adjtime": 305,
    "adjtimex": 159, "quotactl": 179, "vhangup": 153, "sethostname": 170, "setdomainname": 171,
    "fanotify_init": 300, "iopl": 172, "ioperm": 173, "uselib": 134, "lookup_dcookie": 212,
}
_AARCH64_NUMBERS = {
    "clone": 220, "clone3": 435, "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271,
    "kcmp": 272, "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51, "mount_setattr": 442,
    "move_mount": 429, "open_tree": 428, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
    "fspick": 433, "unshare": 97, "setns": 268, "kexec_load": 104, "kexec_file_load": 294,
    "init_module": 105, "finit_module": 273, "delete_module": 106, "bpf": 280,
    "perf_event_open": 241, "keyctl": 219, "add_key": 217, "request_key": 218, "userfaultfd": 282,
    "open_by_handle_at": 265, "name_to_handle_at": 264, "io_uring_setup": 425,
    "io_uring_enter": 426, "io_uring_register": 427, "syslog": 116, "acct": 89, "swapon": 224,
    "swapoff": 225, "reboot": 142, "settimeofday": 170, "clock_settime": 112, "clock_adjtime": 266,
    "adjtimex": 171, "quotactl": 60, "vhangup": 58, "sethostname": 161, "setdomainname": 162,
    "fanotify_init": 262, "lookup_dcookie": 18,
}
# fmt: on
_X86_64 = Arch(0xC000003E, _X86_64_NUMBERS, x32=True)
_AARCH64 = Arch(0xC00000B7, _AARCH64_NUMBERS)
ARCHES = {"x86_64": _X86_64, "amd64": _X86_64, "aarch64": _AARCH64, "arm64": _AARCH64}


class SeccompError(QoinError):
    """No filter for this machine (its architecture is not one the filter knows)."""


class Assembler:
    """A tiny classic-BPF assembler: instructions with symbolic jump targets, resolved by
    :meth:`program` into ``struct sock_filter`` records (``u16 code, u8 jt, u8 jf, u32 k``)."""

    def __init__(self) -> None:
        self._code: list[tuple[int, str | None, str | None, int]] = []
        self._labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        """Mark the next instruction as ``name``."""
        self._labels[name] = len(self._code)

    def load(self, offset: int) -> None:
        """``A = seccomp_data[offset]`` (32 bits)."""
        self._code.append((BPF_LD_W_ABS, None, None, offset))

    def jump(self, op: int, value: int, true: str | None, false: str | None = None) -> None:
        """``if A op value goto true else goto false`` (None: the next instruction)."""
        self._code.append((op, true, false, value))

    def ret(self, value: int) -> None:
        """``return value``."""
        self._code.append((BPF_RET_K, None, None, value))

    def program(self) -> bytes:
        """The program's bytes (native byte order, as the kernel reads it)."""
        out = bytearray()
        for index, (code, true, false, k) in enumerate(self._code):
            out += struct.pack(
                "=HBBI", code, self._offset(index, true), self._offset(index, false), k
            )
        return bytes(out)

    def _offset(self, index: int, target: str | None) -> int:
        if target is None:
            return 0
        offset = self._labels[target] - index - 1
        if not 0 <= offset <= MAX_JUMP:
            raise SeccompError(f"seccomp program: jump to {target} out of range ({offset})")
        return offset


def arch() -> Arch | None:
    """This machine's architecture, if the filter knows it."""
    return ARCHES.get(platform.machine().lower())


def program(machine: Arch | None = None) -> bytes:
    """The filter for ``machine`` (default: this one); :class:`SeccompError` if unknown."""
    target = machine or arch()
    if target is None:
        raise SeccompError(f"no seccomp filter for the {platform.machine()} architecture")
    asm = Assembler()
    asm.load(OFFSET_ARCH)
    asm.jump(BPF_JEQ_K, target.audit, None, "kill")
    asm.load(OFFSET_NR)
    if target.x32:
        asm.jump(BPF_JGE_K, X32_BIT, "deny")
    asm.jump(BPF_JEQ_K, target.numbers["clone"], "clone")
    asm.jump(BPF_JEQ_K, target.numbers["clone3"], "enosys")
    for name in DENIED:
        number = target.numbers.get(name)
        if number is not None:
            asm.jump(BPF_JEQ_K, number, "deny")
    asm.ret(SECCOMP_RET_ALLOW)
    asm.label("clone")
    asm.load(OFFSET_ARG0_LOW)
    asm.jump(BPF_JSET_K, CLONE_NAMESPACES, "deny")
    asm.ret(SECCOMP_RET_ALLOW)
    asm.label("enosys")
    asm.ret(SECCOMP_RET_ERRNO | errno.ENOSYS)
    asm.label("deny")
    asm.ret(SECCOMP_RET_ERRNO | errno.EPERM)
    asm.label("kill")
    asm.ret(SECCOMP_RET_KILL_PROCESS)
    return asm.program()
