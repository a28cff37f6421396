"""Sandbox launcher: run as root by the system Python (stdlib only), it confines and then execs a candidate.

code_sandbox.py does not run this file by path: it concatenates _sandbox_seccomp.py, this file and a call
`main(<config as a Python literal>)` into an in-memory file (memfd) and runs `python3 -I -S /dev/fd/N`. So no host path (and no
config: it holds the candidate's files, and for a check sandbox the expected values) shows in any argv, and
/proc/1/cmdline inside the sandbox reads "python3 -I -S /dev/fd/N". stdin/stdout/stderr are the candidate's.
Steps with namespaces (config "namespaces": true):
  1. PR_SET_PDEATHSIG: die with the verifier worker that started us (so a killed worker leaves nothing behind);
     join the run's cgroup (memory and process limits for the whole run, tmpfs pages included).
  2. unshare(mount, pid, net, ipc, uts, cgroup), then fork: the child is pid 1 ("init") of the new pid
     namespace. This process stays outside and exits with init's status.
  3. init builds a minimal root on a fresh tmpfs and pivot_roots into it: /usr, /etc (and /lib*, /bin, /sbin as
     the host has them) bound read-only + nosuid; /dev with null, zero, full, random, urandom only; a fresh
     /proc (only the namespace's processes); /tmp a private tmpfs limited in bytes AND inodes that holds the
     work directory /tmp/work (and /dev/shm). Nothing else of the host exists in it: no /run, /var, /home,
     /root, /work, no host temporary directory, so no Unix socket file can be reached. Cleanup is the kernel
     unmounting it all when the namespace dies (no rmtree of an adversarial tree). The network namespace has
     only a downed loopback.
  4. init forks the candidate and reaps every process of the namespace until the candidate exits, then exits
     with its status; the kernel then SIGKILLs whatever is left in the namespace.
  5. candidate: rlimits, a fresh session keyring, no supplementary groups, the sandbox uid/gid,
     PR_SET_NO_NEW_PRIVS, the seccomp filter (_sandbox_seccomp.py), every fd above 2 closed, a fixed
     environment, execve of the interpreter.
Without namespaces only steps 1 and 5 happen, in a host work directory made by code_sandbox.py ("uid" mode:
root; "rlimits" mode: the caller's uid, no cgroup, no keyring change).
Exit status 121 with a "sandbox setup failed" line on stderr means the launcher itself failed.
"""
import ctypes
import os
import resource
import signal
import sys

CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x02000000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1
KEYCTL_JOIN_SESSION_KEYRING = 1
SYS_KEYCTL = {"x86_64": 250, "aarch64": 219}
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
SETUP_FAILED = 121
WORK = "/tmp/work"
_DEVICES = ("null", "zero", "full", "random", "urandom")

_libc = ctypes.CDLL(None, use_errno=True)
_machine = os.uname().machine


def _check(rc, what):
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, "%s: %s" % (what, os.strerror(err)))


def _mount(source, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
           "mount %s" % target)


def _bind_readonly(source, target, extra=MS_NODEV):
    _mount(source, target, None, MS_BIND | MS_REC)
    _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | extra)


def _build_root(cfg, new_root):
    """A tmpfs at new_root holding only what the interpreter needs (see the module docstring, step 3)."""
    _mount("tmpfs", new_root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=256,mode=755")
    for top in ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):                  # merged-/usr hosts: /bin -> usr/bin etc.
            os.symlink(os.readlink(top), new_root + top)
        elif os.path.isdir(top):
            os.mkdir(new_root + top)
            _bind_readonly(top, new_root + top)
    for path in cfg["expose"]:
        os.makedirs(new_root + path, exist_ok=True)
        _bind_readonly(path, new_root + path)
    os.mkdir(new_root + "/proc")
    _mount("proc", new_root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.mkdir(new_root + "/tmp")
    _mount("tmpfs", new_root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV,
           "size=%dm,nr_inodes=%d,mode=1777" % (cfg["tmpfs_mb"], cfg["tmpfs_inodes"]))
    os.mkdir(new_root + "/dev")
    _mount("tmpfs", new_root + "/dev", "tmpfs", MS_NOSUID, "size=64k,nr_inodes=64,mode=755")
    for name in _DEVICES:
        open(new_root + "/dev/" + name, "w").close()
        _mount("/dev/" + name, new_root + "/dev/" + name, None, MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, new_root + "/dev/" + name)
    os.mkdir(new_root + "/tmp/.shm", 0o1777)
    os.chmod(new_root + "/tmp/.shm", 0o1777)
    os.mkdir(new_root + "/dev/shm")
    _mount(new_root + "/tmp/.shm", new_root + "/dev/shm", None, MS_BIND)


def _pivot(new_root):
    """Make new_root the root and drop the host's (pivot_root(".", ".") then detach the old root below)."""
    os.chdir(new_root)
    _check(_libc.syscall(SYS_PIVOT_ROOT[_machine], b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "umount old root")
    os.chdir("/")
    _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    _mount(None, "/dev", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)


def _write_files(cfg, workdir):
    """The run's files (hex in the config) into the work directory, owned by the sandbox uid."""
    if not os.path.isdir(workdir):
        os.mkdir(workdir, 0o700)
    for name, data in cfg["files"].items():
        path = os.path.join(workdir, name)
        with open(path, "wb") as f:
            f.write(bytes.fromhex(data))
        if cfg["set_uid"]:
            os.chown(path, cfg["uid"], cfg["gid"])
    if cfg["set_uid"]:
        os.chown(workdir, cfg["uid"], cfg["gid"])
    os.chmod(workdir, 0o700)


def _join_cgroups(cfg):
    for procs in cfg["cgroup_procs"]:
        with open(procs, "w") as f:
            f.write("0")


def _exec_candidate(cfg, cwd):
    os.chdir(cwd)
    for name, value in cfg["rlimits"].items():
        limit = getattr(resource, name)
        resource.setrlimit(limit, (value, value))
    if cfg["set_uid"]:
        # a fresh anonymous session keyring per run; the seccomp filter below then refuses every key call
        _libc.syscall(SYS_KEYCTL.get(_machine, -1), KEYCTL_JOIN_SESSION_KEYRING, None)
        os.setgroups([])
        os.setgid(cfg["gid"])
        os.setuid(cfg["uid"])
    if not install_seccomp(_libc):  # noqa: F821 - defined by _sandbox_seccomp.py, concatenated before this file
        sys.stderr.write("sandbox: no seccomp table for %s; running without the filter\n" % _machine)
    os.closerange(3, 1 << 16)
    env = dict(cfg["env"], HOME=cwd, TMPDIR=cwd)
    os.execve(cfg["python"], [cfg["python"]] + cfg["args"], env)


def _status_code(status):
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def _init(cfg):
    """pid 1 of the namespace: confine, start the candidate, reap until it exits, then exit with its status."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _build_root(cfg, "/tmp")                     # any existing directory does as the mount point
    _pivot("/tmp")
    _write_files(cfg, WORK)
    child = os.fork()
    if child == 0:
        _exec_candidate(cfg, WORK)
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            os._exit(SETUP_FAILED)
        if pid == child:
            os._exit(_status_code(status))


def _main(cfg):
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")
    if os.getppid() != cfg["parent_pid"]:
        os._exit(SETUP_FAILED)            # the worker died before PDEATHSIG was armed
    _join_cgroups(cfg)
    if not cfg["namespaces"]:
        _write_files(cfg, cfg["workdir"])
        _exec_candidate(cfg, cfg["workdir"])
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
    _check(_libc.unshare(flags | (CLONE_NEWCGROUP if cfg["cgroup_procs"] else 0)), "unshare")
    init = os.fork()
    if init == 0:
        _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")
        try:
            _init(cfg)
        except BaseException as e:  # noqa: BLE001
            sys.stderr.write("sandbox setup failed: %s\n" % e)
            sys.stderr.flush()
        os._exit(SETUP_FAILED)
    _, status = os.waitpid(init, 0)
    os._exit(_status_code(status))


def main(cfg):
    try:
        _main(cfg)
    except BaseException as e:  # noqa: BLE001
        sys.stderr.write("sandbox setup failed: %s\n" % e)
        sys.stderr.flush()
        os._exit(SETUP_FAILED)
