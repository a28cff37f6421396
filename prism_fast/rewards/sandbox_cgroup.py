"""One cgroup per sandboxed run: a memory limit for the whole run (every process and its tmpfs pages together)
and a process-count limit, where the machine lets root create cgroups.

RLIMIT_AS is per process, so 64 processes x 512 MiB could hold 32 GiB; a cgroup bounds the sum. Each run gets a
child of the caller's own cgroup (cgroup v2, or the v1 `memory` + `pids` hierarchies: this machine has v1 memory
controllers and an empty v2 tree; v1 uses memory only, see create), created before the launcher starts and removed after the run; the launcher
joins it before unsharing, so the run's cgroup namespace hides the host's cgroup paths. Where no cgroup can be
made (not root, read-only /sys/fs/cgroup, v2 without delegated controllers), `RunCgroup.create` returns None and
code_sandbox.py falls back to a smaller process count (documented in docs/rewards.md); that is logged once.
"""
from __future__ import annotations

import errno
import itertools
import os
import time

_ROOT = "/sys/fs/cgroup"
_counter = itertools.count()
_PREFIX = "prism_sandbox_"


def _own_paths() -> dict[str, str]:
    """controller ("memory", "pids", or "" for the v2 tree) -> this process's cgroup path in that hierarchy."""
    paths = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                paths[c] = path
    return paths


def _v2_dir(paths: dict[str, str]) -> str | None:
    """This process's v2 cgroup directory when /sys/fs/cgroup is a v2 tree with the memory controller."""
    if "" not in paths or not os.path.exists(os.path.join(_ROOT, "cgroup.controllers")):
        return None
    own = os.path.join(_ROOT, paths[""].lstrip("/"))
    try:
        with open(os.path.join(own, "cgroup.controllers")) as f:
            return own if "memory" in f.read().split() else None
    except OSError:
        return None


class RunCgroup:
    """The cgroup directories of one run; `procs_files` are what the launcher writes "0" into to join."""

    def __init__(self, dirs: list[str], procs_files: list[str]):
        self.dirs = dirs
        self.procs_files = procs_files

    @classmethod
    def create(cls, memory_bytes: int, max_processes: int) -> RunCgroup | None:
        name = f"{_PREFIX}{os.getpid()}_{next(_counter)}"
        made: list[str] = []
        try:
            paths = _own_paths()
            sweep_stale(paths)
            v2 = _v2_dir(paths)
            if v2 is not None:
                d = os.path.join(v2, name)
                os.mkdir(d)
                made.append(d)
                _write(d, "memory.max", memory_bytes)
                _write(d, "memory.swap.max", 0, optional=True)
                _write(d, "pids.max", max_processes, optional=True)
                return cls(made, [os.path.join(d, "cgroup.procs")])
            if "memory" not in paths:
                return None
            mem = os.path.join(_ROOT, "memory", paths["memory"].lstrip("/"), name)
            os.mkdir(mem)
            made.append(mem)
            _write(mem, "memory.limit_in_bytes", memory_bytes)
            _write(mem, "memory.memsw.limit_in_bytes", memory_bytes, optional=True)   # no swap past the limit
            # v1: no `pids` cgroup. Each cgroup.procs write in v1 waits for an RCU grace period (the threadgroup
            # rwsem), ~10-20 ms per run on a busy machine; RLIMIT_NPROC of the per-worker uid bounds processes.
            procs = [os.path.join(mem, "cgroup.procs")]
            return cls(made, procs)
        except OSError:
            cls(made, []).remove()
            return None

    def remove(self, wait_s: float = 2.0) -> None:
        """rmdir every directory; a run's last processes may take a few ms to leave after SIGKILL (EBUSY)."""
        end = time.monotonic() + wait_s
        for d in reversed(self.dirs):
            while True:
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or time.monotonic() > end:
                        break
                    time.sleep(0.005)


def _parent_dirs(paths: dict[str, str]) -> list[str]:
    """Where this process's run cgroups are made (one directory per hierarchy)."""
    dirs = []
    v2 = _v2_dir(paths)
    if v2 is not None:
        dirs.append(v2)
    for c in ("memory", "pids"):                # pids: swept too, for cgroups left by older versions
        if c in paths:
            dirs.append(os.path.join(_ROOT, c, paths[c].lstrip("/")))
    return dirs


def sweep_stale(paths: dict[str, str] | None = None) -> None:
    """Remove run cgroups left by a process that no longer exists (a verifier worker SIGKILLed by the pool, or
    a caller killed mid-batch): an empty cgroup is only a directory, but they must not pile up."""
    try:
        parents = _parent_dirs(paths or _own_paths())
    except OSError:
        return
    for parent in parents:
        try:
            names = [n for n in os.listdir(parent) if n.startswith(_PREFIX)]
        except OSError:
            continue
        for n in names:
            pid = n[len(_PREFIX):].split("_")[0]
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                RunCgroup([os.path.join(parent, n)], []).remove(wait_s=0.5)


def _write(d: str, name: str, value: int, optional: bool = False) -> None:
    try:
        with open(os.path.join(d, name), "w") as f:
            f.write(str(value))
    except OSError:
        if not optional:
            raise
