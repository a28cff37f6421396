"""A seccomp filter for candidate programs: no new namespaces, mounts, keys, Unix sockets or kernel side doors.

Classic BPF installed with prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER) through ctypes (after PR_SET_NO_NEW_PRIVS,
which lets an unprivileged process install it too), so it needs no libseccomp and no compiler. Why each rule:
  unshare, setns, clone with a CLONE_NEW* flag: a nested user namespace gives the candidate CAP_SYS_ADMIN over
      fresh mounts, e.g. a private tmpfs outside the memory limit (issue 25 wrote 768 MiB past 512 MiB that way);
  clone3: its flags sit in a struct that BPF cannot read, so it answers ENOSYS (glibc then falls back to clone);
  mount, umount2, pivot_root, chroot and the new mount API (open_tree ... mount_setattr): no file-system changes;
  keyctl, add_key, request_key: the kernel keyrings outlive a run (the user keyring belongs to the uid), so a
      key written by one submission could be read by the next;
  socket(AF_UNIX): a Unix socket file reachable by path would connect out of the network namespace;
  ptrace, process_vm_readv/writev: no reading another sandboxed process's memory (the check of a function test
      never shares a sandbox with the candidate, this is defence in depth);
  io_uring_*: its requests are not seen by seccomp; bpf, userfaultfd, perf_event_open: kernel attack surface.
A foreign architecture (or the x32 ABI on x86_64) kills the process, so a syscall number cannot be re-mapped.
Denied calls fail with an errno (EPERM / EACCES / ENOSYS), so ordinary programs see an OSError, not a crash.

Stdlib only: this source is concatenated into the sandbox launcher (code_sandbox.launcher_script).
"""
import ctypes
import errno
import os

_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
# name -> (x86_64 number, aarch64 number)
_SYSCALLS = {
    "clone": (56, 220), "clone3": (435, 435), "unshare": (272, 97), "setns": (308, 268),
    "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41), "chroot": (161, 51),
    "open_tree": (428, 428), "move_mount": (429, 429), "fsopen": (430, 430), "fsconfig": (431, 431),
    "fsmount": (432, 432), "fspick": (433, 433), "mount_setattr": (442, 442),
    "keyctl": (250, 219), "add_key": (248, 217), "request_key": (249, 218),
    "socket": (41, 198), "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "io_uring_setup": (425, 425), "io_uring_enter": (426, 426), "io_uring_register": (427, 427),
    "bpf": (321, 280), "userfaultfd": (323, 282), "perf_event_open": (298, 241),
}
_DENY_EPERM = ("unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount", "fsopen",
               "fsconfig", "fsmount", "fspick", "mount_setattr", "keyctl", "add_key", "request_key", "ptrace",
               "process_vm_readv", "process_vm_writev", "io_uring_setup", "io_uring_enter", "io_uring_register",
               "bpf", "userfaultfd", "perf_event_open")
CLONE_NEW_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x80
AF_UNIX = 1

_LD_W_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_RET_ALLOW, _RET_KILL_PROCESS, _RET_ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
_OFF_NR, _OFF_ARCH, _OFF_ARG0 = 0, 4, 16          # struct seccomp_data; the low half of args[0] (little-endian)
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2


class _Filter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]


class _Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Filter))]


def seccomp_program(machine=None):
    """The filter as a list of (code, jt, jf, k); None on an architecture without a syscall table here."""
    machine = machine or os.uname().machine         # not platform.machine(): `platform` costs ~5 ms to import
    if machine not in _AUDIT_ARCH:
        return None
    col = 0 if machine == "x86_64" else 1
    nr = {name: nums[col] for name, nums in _SYSCALLS.items()}
    prog = [(_LD_W_ABS, 0, 0, _OFF_ARCH), (_JEQ, 1, 0, _AUDIT_ARCH[machine]), (_RET, 0, 0, _RET_KILL_PROCESS)]
    if machine == "x86_64":                         # x32 syscalls: numbers with bit 30 set
        prog += [(_LD_W_ABS, 0, 0, _OFF_NR), (_JGE, 0, 1, 0x40000000), (_RET, 0, 0, _RET_KILL_PROCESS)]

    def rule(number, body):
        # each body ends in a RET, so a non-matching number jumps over it to the next rule
        prog.extend([(_LD_W_ABS, 0, 0, _OFF_NR), (_JEQ, 0, len(body), number)] + body)

    for name in _DENY_EPERM:
        rule(nr[name], [(_RET, 0, 0, _RET_ERRNO | errno.EPERM)])
    rule(nr["clone3"], [(_RET, 0, 0, _RET_ERRNO | errno.ENOSYS)])
    rule(nr["clone"], [(_LD_W_ABS, 0, 0, _OFF_ARG0), (_JSET, 0, 1, CLONE_NEW_FLAGS),
                       (_RET, 0, 0, _RET_ERRNO | errno.EPERM), (_RET, 0, 0, _RET_ALLOW)])
    rule(nr["socket"], [(_LD_W_ABS, 0, 0, _OFF_ARG0), (_JEQ, 0, 1, AF_UNIX),
                        (_RET, 0, 0, _RET_ERRNO | errno.EACCES), (_RET, 0, 0, _RET_ALLOW)])
    prog.append((_RET, 0, 0, _RET_ALLOW))
    return prog


def install_seccomp(libc):
    """Install the filter on the calling thread (inherited by every child and kept across execve). Returns False
    on an architecture this module has no table for; raises OSError when the kernel refuses it."""
    prog = seccomp_program()
    if prog is None:
        return False
    filters = (_Filter * len(prog))(*[_Filter(*ins) for ins in prog])
    fprog = _Prog(len(prog), filters)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(NO_NEW_PRIVS)")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")
    return True
