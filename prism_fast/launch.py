"""`python -m prism_fast.launch [torchrun options] -m prism_fast.midtrain ...`: torchrun, with one-line failures.

Same arguments and behaviour as `torchrun` (it calls torch.distributed.run in-process), except how a failed job
ends. torchrun answers any non-zero child with a ChildFailedError traceback and exit 1. Here:
  - the first failed worker exited 2 (a user error: rank 0 already printed `error: ...`) -> nothing more, exit 2;
  - otherwise one line naming the first failed rank and its exit code or signal, exit 1;
  - the launcher itself got SIGTERM/SIGINT (preemption): it forwarded the signal, the workers saved a checkpoint
    at the current step (train/trainer.py), and it exits 128 + signal with one line instead of a traceback.
    torchrun gives the workers 30 s after forwarding before it SIGKILLs them: a save that takes longer is cut
    short (its `.tmp` is then ignored and the previous checkpoint is used).
`--debug` (torchrun's own traceback and the elastic agent's error logs) is passed through to torchrun's behaviour.
"""
from __future__ import annotations

import logging
import sys


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv:  # the worker entry points read --debug too: leave it in their arguments
        return run(parse_args(argv)) or 0
    # The agent logs each worker failure at ERROR before raising; the line below says it once.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        run(parse_args(argv))
    except ChildFailedError as e:
        rank, f = e.get_first_failure()
        if f.exitcode == 2:  # the root cause; the agent then stopped the others (their codes are its signals)
            return 2
        how = f"was killed by {f.signal_name()}" if f.exitcode < 0 else f"exited with code {f.exitcode}"
        print(f"error: rank {rank} (pid {f.pid}) {how}; the launcher stopped the other ranks. Checkpoints already "
              f"written are intact: rerun to resume from the newest (--checkpoint.resume=auto)",
              file=sys.stderr, flush=True)
        return 1
    except SignalException as e:
        print(f"error: the launcher received {e.sigval.name}; the workers were told to save a checkpoint at the "
              f"current step and exit (their log says which); rerun to resume", file=sys.stderr, flush=True)
        return 128 + int(e.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
