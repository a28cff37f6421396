"""Sandbox launcher: run as root by the system Python (stdlib only), it confines and then execs a candidate.

Usage: python3 -I -S _sandbox_init.py '<json config>' (built by code_sandbox.py; stdin/stdout/stderr are the
candidate's). Steps with namespaces (config "namespaces": true):
  1. PR_SET_PDEATHSIG: die with the verifier worker that started us (so a killed worker leaves nothing behind).
  2. unshare(mount, pid, net, ipc, uts), then fork: the child is pid 1 ("init") of the new pid namespace.
     This process stays outside and exits with init's status.
  3. init: private mount propagation; every mount re-bound read-only and nosuid; a fresh /proc (only the
     namespace's processes, so no other process's environment is visible); tmpfs over /tmp, /var/tmp,
     /dev/shm; the work directory bound read-write at /tmp/work; empty read-only tmpfs over the "hide" paths
     (the caller's home, repository, working directory). The new network namespace has only a downed loopback.
  4. init forks the candidate and reaps every process of the namespace until the candidate exits, then exits
     with its status; the kernel then SIGKILLs whatever is left in the namespace (detached / double-forked
     processes included).
  5. candidate: rlimits, no supplementary groups, the sandbox uid/gid, PR_SET_NO_NEW_PRIVS, fixed environment,
     execve of the interpreter.
Without namespaces only step 1 and 5 happen (rlimits + uid); without root only the rlimits.
Exit status 121 with a "sandbox setup failed" line on stderr means the launcher itself failed.
"""
import ctypes
import json
import os
import resource
import signal
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
SETUP_FAILED = 121

_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc, what):
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, "%s: %s" % (what, os.strerror(err)))


def _mount(source, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
           "mount %s" % target)


def _mount_points():
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    # mountinfo escapes blanks as \040 etc.; such mounts are skipped rather than mis-handled.
    return [p for p in points if "\\" not in p]


def _confine_filesystem(cfg):
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    work_fd = os.open(cfg["workdir"], os.O_RDONLY | os.O_DIRECTORY)
    for point in _mount_points():
        try:
            _mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)
        except OSError:
            pass    # e.g. pseudo file systems that refuse a remount; they get covered or are read-only anyway
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for d in ("/tmp", "/var/tmp", "/dev/shm"):
        if os.path.isdir(d):
            _mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, "size=%dm,mode=1777" % cfg["tmpfs_mb"])
    os.mkdir("/tmp/work", 0o755)
    _mount("/proc/self/fd/%d" % work_fd, "/tmp/work", None, MS_BIND)
    _mount(None, "/tmp/work", None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV)
    os.close(work_fd)
    for path in cfg["hide"]:
        if os.path.isdir(path):
            try:
                _mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=16k,mode=755")
            except OSError:
                pass
    return "/tmp/work"


def _exec_candidate(cfg, cwd):
    os.chdir(cwd)
    for name, value in cfg["rlimits"].items():
        limit = getattr(resource, name)
        resource.setrlimit(limit, (value, value))
    if cfg["set_uid"]:
        os.setgroups([])
        os.setgid(cfg["gid"])
        os.setuid(cfg["uid"])
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    env = dict(cfg["env"], HOME=cwd, TMPDIR=cwd)
    os.execve(cfg["python"], [cfg["python"]] + cfg["args"], env)


def _status_code(status):
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def _init(cfg):
    """pid 1 of the namespace: confine, start the candidate, reap until it exits, then exit with its status."""
    cwd = _confine_filesystem(cfg)
    child = os.fork()
    if child == 0:
        _exec_candidate(cfg, cwd)
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            os._exit(SETUP_FAILED)
        if pid == child:
            os._exit(_status_code(status))


def main():
    cfg = json.loads(sys.argv[1])
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")
    if os.getppid() != cfg["parent_pid"]:
        os._exit(SETUP_FAILED)            # the worker died before PDEATHSIG was armed
    if not cfg["namespaces"]:
        _exec_candidate(cfg, cfg["workdir"])
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS), "unshare")
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


if __name__ == "__main__":
    try:
        main()
    except BaseException as e:  # noqa: BLE001
        sys.stderr.write("sandbox setup failed: %s\n" % e)
        sys.stderr.flush()
        os._exit(SETUP_FAILED)
