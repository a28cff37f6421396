"""Run an untrusted Python program with a wall-clock limit, capped output and nothing reachable outside.

What it relies on, strongest first (the mode is probed once per process and logged once when it is not the
first):
  "namespaces"  root + unshare(2): new mount, pid, network, ipc and uts namespaces, a read-only file system
                with private tmpfs /tmp, /var/tmp, /dev/shm, a fresh /proc, hidden home / repository / caller
                directories, plus everything of "uid" (see _sandbox_init.py for the exact steps).
  "uid"         root without namespaces: the candidate runs under a uid of its own with rlimits; after the
                run every process of that uid is SIGKILLed (kill(-1) issued *as* that uid, which the kernel
                applies atomically, so a fork bomb cannot outrun it). No network isolation; world-writable
                directories (/tmp) stay writable.
  "rlimits"     not root: the caller's uid, rlimits and the process-group kill only (detached processes can
                outlive the run; no network or file-system isolation). Only for trusted experiments.
Every mode: a fresh empty working directory (mode 700), stdin from a file (a program that never reads it cannot
block), a fixed minimal environment (no caller variables), rlimits on CPU seconds, address space, processes,
file size and open files, stdout capped (the run is killed at the cap), the whole process group SIGKILLed at
the wall-clock limit, and PR_SET_PDEATHSIG so a verifier worker killed by the pool takes its sandbox with it.

The sandbox uid is SANDBOX_UID_BASE + the verifier worker's pid: unique among live workers, so RLIMIT_NPROC
(counted per uid) of one sandbox is not eaten by a fork bomb in another, and the kill-by-uid sweep cannot hit a
neighbour. Candidates run under a system interpreter (/usr/bin/python3 by default, PRISM_SANDBOX_PYTHON to
change): it must be executable by that unprivileged uid, which a virtualenv under /root is not.
"""
from __future__ import annotations

import dataclasses
import json
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

log = logging.getLogger(__name__)

SANDBOX_UID_BASE = 1_500_000_000
SETUP_FAILED = 121                      # _sandbox_init.py's exit status when it could not confine
_LAUNCHER = str(Path(__file__).with_name("_sandbox_init.py"))
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
    hide: tuple[str, ...] = field(default_factory=tuple)
    """Directories covered by an empty tmpfs inside the sandbox (namespaces mode)."""


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


_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc", "/opt", "/tmp", "/var", "/run", "/proc",
                "/dev", "/sys")


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def default_hide() -> tuple[str, ...]:
    """The caller's home, working directory and this repository (+ /root, /home): directories a candidate has no
    business reading. A directory that holds or lies inside system directories (or the candidate interpreter)
    is never hidden, since the interpreter needs them."""
    here = str(Path(__file__).resolve().parents[2])
    python = os.path.realpath(os.environ.get("PRISM_SANDBOX_PYTHON", "/usr/bin/python3"))
    hide = set()
    for p in {os.path.expanduser("~"), os.getcwd(), here, "/root", "/home"}:
        p = os.path.realpath(p)
        if any(_within(p, d) or _within(d, p) for d in _SYSTEM_DIRS) or _within(python, p):
            continue
        hide.add(p)
    return tuple(sorted(hide))


def run_program(source: str, stdin: str | bytes, *, timeout_s: float, config: SandboxConfig,
                stdout_cap: int | None = None) -> ProgramRun:
    """Run `source` as main.py in a fresh sandbox; stdin is fed from a file. Never raises for program faults."""
    if config.mode not in MODES:
        raise ValueError(f"run_program needs a resolved sandbox mode ({', '.join(MODES)}), got {config.mode!r}; "
                         f"resolve 'auto' with probe_mode()")
    cap = config.stdout_cap_bytes if stdout_cap is None else stdout_cap
    workdir = tempfile.mkdtemp(prefix="prism_sandbox_")
    uid = sandbox_uid()
    set_uid = config.mode != "rlimits"
    t0 = time.monotonic()
    proc = None
    try:
        (Path(workdir) / "main.py").write_text(source, encoding="utf-8", errors="surrogateescape")
        if set_uid:
            for p in (workdir, os.path.join(workdir, "main.py")):
                os.chown(p, uid, uid)
        os.chmod(workdir, 0o700)
        with tempfile.TemporaryFile() as stdin_file:
            stdin_file.write(stdin.encode("utf-8", "surrogateescape") if isinstance(stdin, str) else stdin)
            stdin_file.seek(0)
            cfg = {"namespaces": config.mode == "namespaces", "set_uid": set_uid, "uid": uid, "gid": uid,
                   "workdir": workdir, "python": config.python, "args": ["-s", "-B", "main.py"], "env": _ENV,
                   "parent_pid": os.getpid(), "tmpfs_mb": config.tmpfs_mb, "hide": list(config.hide),
                   "rlimits": {"RLIMIT_CPU": math.ceil(timeout_s) + 1,
                               "RLIMIT_AS": config.memory_mb << 20,
                               "RLIMIT_NPROC": config.max_processes,
                               "RLIMIT_FSIZE": config.max_file_mb << 20,
                               "RLIMIT_NOFILE": config.max_open_files,
                               "RLIMIT_CORE": 0}}
            launcher_python = config.python if os.path.exists(config.python) else sys.executable
            proc = subprocess.Popen([launcher_python, "-I", "-S", _LAUNCHER, json.dumps(cfg)], stdin=stdin_file,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(_ENV),
                                    cwd="/", close_fds=True, start_new_session=True)
            stdout, stderr, timed_out, limited = _collect(proc, t0 + timeout_s, cap)
        return ProgramRun(proc.returncode, stdout, stderr.decode("utf-8", "replace")[-2000:], timed_out, limited,
                          time.monotonic() - t0)
    finally:
        if proc is not None:
            _kill_group(proc)
        if config.mode == "uid":
            _kill_uid(uid)
        shutil.rmtree(workdir, ignore_errors=True)


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


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, 9)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()


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
