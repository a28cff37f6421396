"""Run an untrusted Python program with a wall-clock limit, capped output and nothing reachable outside.

What it relies on, strongest first (the mode is probed once per process and logged once when it is not the
first):
  "namespaces"  root + unshare(2): new mount, pid, network, ipc, uts and cgroup namespaces and a minimal root
                (pivot_root into a tmpfs with read-only /usr, /etc, /lib*; /dev with 5 devices; a fresh /proc;
                /tmp a private tmpfs limited in bytes and inodes holding the work directory), plus everything
                of "uid" (see _sandbox_init.py for the exact steps).
  "uid"         root without namespaces: the candidate runs under a uid of its own with rlimits, in a host
                work directory; after the run every process of that uid is SIGKILLed (kill(-1) issued *as*
                that uid, which the kernel applies atomically, so a fork bomb cannot outrun it). No network
                isolation; world-writable directories (/tmp) stay writable.
  "rlimits"     not root: the caller's uid, rlimits, seccomp and the process-group kill only (detached
                processes can outlive the run; no network or file-system isolation). Only for trusted experiments.
Every mode: a fresh private working directory, stdin from a file or a pipe (run_program: a file, so a program
that never reads it cannot block), a fixed minimal environment (no caller variables), rlimits on CPU seconds,
address space, processes, file size and open files, the seccomp filter of _sandbox_seccomp.py, stdout capped (the
run is killed at the cap), the whole process group SIGKILLed at the wall-clock limit, and PR_SET_PDEATHSIG so a
verifier worker killed by the pool takes its sandbox with it. As root: a fresh session keyring and a cgroup per
run (sandbox_cgroup.py) bounding the memory and processes of the whole run, else a smaller process count.

The launcher (_sandbox_seccomp.py + _sandbox_init.py + its config as a literal) runs from a memfd, so no argv
shows a host path or the run's files. The sandbox uid is SANDBOX_UID_BASE + the verifier worker's pid (the check
side of a function test: + CHECK_UID_OFFSET): unique among live workers, so RLIMIT_NPROC (counted per uid) of one
sandbox is not eaten by a fork bomb in another, and the kill-by-uid sweep cannot hit a neighbour. Candidates run
under a system interpreter (/usr/bin/python3 by default, PRISM_SANDBOX_PYTHON to change): it must be executable
by that unprivileged uid, which a virtualenv under /root is not.
"""
from __future__ import annotations

import ctypes
import dataclasses
import logging
import math
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from prism_fast.rewards.sandbox_cgroup import RunCgroup

log = logging.getLogger(__name__)

SANDBOX_UID_BASE = 1_500_000_000
CHECK_UID_OFFSET = 1 << 30      # the check side of a function test runs as a uid of its own (function_test.py)
SETUP_FAILED = 121                      # _sandbox_init.py's exit status when it could not confine
# The launcher runs from a memfd as one script: the seccomp filter's source, then the launcher's (both stdlib only).
_LAUNCHER_SOURCE = "\n".join(Path(__file__).with_name(f).read_text() for f in ("_sandbox_seccomp.py",
                                                                               "_sandbox_init.py"))
PR_SET_CHILD_SUBREAPER = 36
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
MODES = ("namespaces", "uid", "rlimits")


class SandboxUnavailable(RuntimeError):
    """No sandbox mode works on this machine (the message says what to fix)."""


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """Limits of one candidate run (picklable: it travels with each code task to the workers)."""
    mode: str = "auto"
    """One of MODES, or "auto": the strongest this machine allows (probe_mode, run by the Rewarder)."""
    python: str = "/usr/bin/python3"
    """Interpreter for candidates (must be executable by an unprivileged uid)."""
    memory_mb: int = 512
    """RLIMIT_AS of each candidate process (a memory bomb gets MemoryError)."""
    max_processes: int = 64
    """RLIMIT_NPROC for the sandbox uid (a fork bomb stalls at this many)."""
    max_file_mb: int = 16
    max_open_files: int = 64
    stdout_cap_bytes: int = 1 << 20
    """A program writing more than this to stdout is killed ("output_limit")."""
    tmpfs_mb: int = 64
    """Size of the run's private /tmp (work directory included; namespaces mode)."""
    tmpfs_inodes: int = 4096
    """Files + directories the run may create in its /tmp (namespaces mode)."""
    expose: tuple[str, ...] = field(default_factory=tuple)
    """Host directories bound read-only into the sandbox root besides the system ones (namespaces mode)."""


@dataclass(slots=True)
class ProgramRun:
    returncode: int | None
    stdout: bytes
    stderr_tail: str
    timed_out: bool
    output_limited: bool
    seconds: float

    @property
    def setup_failed(self) -> bool:
        return self.returncode == SETUP_FAILED and "sandbox setup failed" in self.stderr_tail


def sandbox_uid(worker_pid: int | None = None) -> int:
    return SANDBOX_UID_BASE + (os.getpid() if worker_pid is None else worker_pid)


_ROOT_DIRS = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")   # in every sandbox root


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def default_expose(python: str) -> tuple[str, ...]:
    """Extra read-only directories for the sandbox root: the candidate interpreter's prefix when it lives outside
    the system directories (a /opt/python3.11, say); nothing else of the host is visible."""
    real = os.path.realpath(python)
    if any(_within(real, d) for d in _ROOT_DIRS):
        return ()
    return (os.path.dirname(os.path.dirname(real)),)


def launcher_script(cfg: dict) -> bytes:
    """The launcher as one stdlib-only script: the seccomp filter, the launcher, and its config."""
    # a literal, not JSON: the launcher then needs no json (nor re) import, ~10 ms per run on a busy machine
    return (_LAUNCHER_SOURCE + f"\nmain({cfg!r})\n").encode()


def _encode_file(data: str | bytes) -> str:
    # surrogatepass: a lone surrogate in a response or a test input is the model's or the data's problem (the
    # program then fails to parse, or reads odd bytes), never a verifier crash while writing the file
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    return raw.hex()


class Started:
    """A launched sandbox: `proc` (its stdout/stderr are pipes) and `finish()`, which must always run."""

    def __init__(self, files: dict[str, str | bytes], entry: str, stdin, *, timeout_s: float,
                 config: SandboxConfig, python_flags: tuple[str, ...] = ("-s", "-B"), uid_offset: int = 0,
                 stdout=subprocess.PIPE):
        if config.mode not in MODES:
            raise ValueError(f"run_program needs a resolved sandbox mode ({', '.join(MODES)}), got "
                             f"{config.mode!r}; resolve 'auto' with probe_mode()")
        self.config = config
        self.uid = sandbox_uid() + uid_offset
        self.workdir = None
        self.cgroup = None
        self.proc = None
        self._init_pid = None
        self._killed = False
        set_uid = config.mode != "rlimits"
        namespaces = config.mode == "namespaces"
        max_processes = config.max_processes
        if set_uid:
            self.cgroup = RunCgroup.create((config.memory_mb + config.tmpfs_mb) << 20, config.max_processes)
            if self.cgroup is None:
                max_processes = _fallback_processes(config)
        if not namespaces:            # fallback modes: a host directory (rlimits mode cannot mount a tmpfs)
            self.workdir = tempfile.mkdtemp(prefix="prism_sandbox_")
            if set_uid:
                os.chown(self.workdir, self.uid, self.uid)
        cfg = {"namespaces": namespaces, "set_uid": set_uid, "uid": self.uid, "gid": self.uid,
               "workdir": self.workdir, "python": config.python, "args": [*python_flags, entry], "env": _ENV,
               "parent_pid": os.getpid(), "tmpfs_mb": config.tmpfs_mb, "tmpfs_inodes": config.tmpfs_inodes,
               "expose": list(config.expose),
               "files": {name: _encode_file(data) for name, data in files.items()},
               "cgroup_procs": self.cgroup.procs_files if self.cgroup else [],
               "rlimits": {"RLIMIT_CPU": math.ceil(timeout_s) + 1,
                           "RLIMIT_AS": config.memory_mb << 20,
                           "RLIMIT_NPROC": max_processes,
                           "RLIMIT_FSIZE": config.max_file_mb << 20,
                           "RLIMIT_NOFILE": config.max_open_files,
                           "RLIMIT_CORE": 0}}
        script = os.memfd_create("prism-sandbox", 0)
        try:
            os.write(script, launcher_script(cfg))
            launcher_python = config.python if os.path.exists(config.python) else sys.executable
            self.proc = subprocess.Popen([launcher_python, "-I", "-S", f"/dev/fd/{script}"], stdin=stdin,
                                         stdout=stdout, stderr=subprocess.PIPE, env=dict(_ENV), cwd="/",
                                         close_fds=True, pass_fds=(script,), start_new_session=True)
        except BaseException:
            self.finish()
            raise
        finally:
            os.close(script)

    def kill(self) -> None:
        """SIGKILL the run's process group (idempotent, does not wait: finish() does)."""
        if self.proc is None or self._killed:
            return
        self._killed = True
        if self.config.mode == "namespaces":
            self._init_pid = _first_child(self.proc.pid)
        try:
            os.killpg(self.proc.pid, 9)
        except (ProcessLookupError, PermissionError):
            pass

    def finish(self) -> None:
        """Kill whatever is left of the run, reap it, and remove its cgroup and host work directory."""
        if self.proc is not None:
            self.kill()
            self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()
            if self._init_pid is not None:
                _reap(self._init_pid)    # orphaned by the kill: reparented to us when we are a subreaper
        if self.config.mode == "uid":
            _kill_uid(self.uid)
        reap_orphans()
        if self.cgroup is not None:
            self.cgroup.remove()
        if self.workdir is not None:
            _remove_tree(self.workdir)


def run_program(source: str, stdin: str | bytes, *, timeout_s: float, config: SandboxConfig,
                stdout_cap: int | None = None) -> ProgramRun:
    """Run `source` as main.py in a fresh sandbox; stdin is fed from a file. Never raises for program faults."""
    cap = config.stdout_cap_bytes if stdout_cap is None else stdout_cap
    t0 = time.monotonic()
    with tempfile.TemporaryFile() as stdin_file:
        stdin_file.write(stdin.encode("utf-8", "surrogatepass") if isinstance(stdin, str) else stdin)
        stdin_file.seek(0)
        run = Started({"main.py": source}, "main.py", stdin_file, timeout_s=timeout_s, config=config)
        try:
            stdout, stderr, timed_out, limited = _collect(run.proc, t0 + timeout_s, cap)
        finally:
            run.finish()
    return ProgramRun(run.proc.returncode, stdout, stderr.decode("utf-8", "replace")[-2000:], timed_out, limited,
                      time.monotonic() - t0)


def _fallback_processes(config: SandboxConfig) -> int:
    """Without a cgroup, memory is bounded only per process (RLIMIT_AS): cap the process count so that processes
    x address space of one run stays within half the machine's RAM shared by one run per CPU."""
    global _warned_no_cgroup
    with open("/proc/meminfo") as f:
        total_mb = int(f.readline().split()[1]) >> 10
    n = max(4, min(config.max_processes, total_mb // (2 * (os.cpu_count() or 1)) // config.memory_mb))
    if not _warned_no_cgroup:
        _warned_no_cgroup = True
        log.warning("code sandbox: no cgroup for the run's memory; bounding it as %d processes x %d MiB instead",
                    n, config.memory_mb)
    return n


_warned_no_cgroup = False


def become_subreaper() -> None:
    """Adopt the orphans of our sandboxes (an outer launcher killed at the limit leaves its namespace init behind),
    so they are reaped here instead of staying zombies under a pid 1 that may never reap. Only for processes whose
    children are all sandboxes (the verifier workers): reap_orphans() then waits for any child."""
    global _subreaper
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0:
        _subreaper = True


_subreaper = False


def reap_orphans() -> None:
    """Reap every child that has already exited (only in a subreaper, whose children are all ours)."""
    if not _subreaper:
        return
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _first_child(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = f.read().split()
    except OSError:
        return None
    return int(kids[0]) if kids else None


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass                                   # not our child (we are no subreaper, or it was reaped already)


def _remove_tree(path: str) -> None:
    """rm -rf of a fallback work directory: shutil.rmtree recurses in Python and fails on a 2000-deep tree."""
    shutil.rmtree(path, ignore_errors=True)
    if os.path.exists(path):
        subprocess.run(["rm", "-rf", "--one-file-system", path], check=False)


def _collect(proc: subprocess.Popen, deadline: float, cap: int) -> tuple[bytes, bytes, bool, bool]:
    """Read stdout (up to cap) and the stderr tail until both close and the process exits, or the deadline."""
    out, err = bytearray(), bytearray()
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    sel.register(proc.stderr, selectors.EVENT_READ)
    try:
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return bytes(out), bytes(err), True, False
            for key, _ in sel.select(remaining):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fileobj)
                elif key.fileobj is proc.stdout:
                    out += chunk
                    if len(out) > cap:
                        return bytes(out[:cap]), bytes(err), False, True
                else:
                    err = (err + chunk)[-8192:]
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return bytes(out), bytes(err), True, False
        return bytes(out), bytes(err), False, False
    finally:
        sel.close()


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of `uid`: a child drops to that uid and calls kill(-1), which the kernel applies to
    all of the uid's processes under one lock, so forking cannot outrun it."""
    code = f"import os\nos.setgroups([]); os.setgid({uid}); os.setuid({uid})\ntry: os.kill(-1, 9)\nexcept OSError: pass"
    subprocess.run([sys.executable, "-I", "-S", "-c", code], env=dict(_ENV), cwd="/", check=False, timeout=30)


# ----------------------------------------------------------------------------------------------- mode probe
_mode_lock = threading.Lock()
_probed: dict[str, str] = {}


def probe_mode(config: SandboxConfig) -> SandboxConfig:
    """`config` with mode "auto" resolved to the strongest mode this machine allows (checked once per process by
    running a tiny program in each mode); logs once when it must fall back; raises SandboxUnavailable when no
    mode works. An explicit mode is returned as it is."""
    if config.mode != "auto":
        if config.mode not in MODES:
            raise ValueError(f"sandbox mode {config.mode!r}; valid: auto, {', '.join(MODES)}")
        return config
    with _mode_lock:
        if config.python not in _probed:
            _probed[config.python] = _probe(config)
    return dataclasses.replace(config, mode=_probed[config.python])


def _probe(config: SandboxConfig) -> str:
    if not (os.path.isfile(config.python) and os.access(config.python, os.X_OK)):
        raise SandboxUnavailable(f"sandbox interpreter {config.python} not found: install python3 there or set "
                           f"PRISM_SANDBOX_PYTHON to one that an unprivileged uid can execute")
    modes = MODES if os.geteuid() == 0 else ("rlimits",)
    failures = []
    for mode in modes:
        run = run_program("print('sandbox-ok')", "", timeout_s=10.0, config=dataclasses.replace(config, mode=mode))
        if run.returncode == 0 and run.stdout.strip() == b"sandbox-ok":
            if mode != "namespaces":
                log.warning("code sandbox: namespaces unavailable (%s); falling back to mode %r: %s", "; ".join(
                    failures) or "not root", mode, "uid + rlimits, no network isolation" if mode == "uid" else
                    "rlimits only, same uid, no network or file isolation")
            return mode
        failures.append(f"{mode}: rc={run.returncode} {run.stderr_tail.strip()[-200:]}")
    raise SandboxUnavailable("code sandbox unusable: " + " | ".join(failures) + f". Make {config.python} executable "
                       f"by unprivileged users or set PRISM_SANDBOX_PYTHON")
