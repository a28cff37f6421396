"""`python -m prism_fast.analyze <command> ...`: PRISM analyses of checkpoints (weights, direction, trajectory, cka,
landscape). Argument parsing lives in prism_fast/analysis/cli.py; see docs/analysis.md."""
from prism_fast.analysis.cli import main

if __name__ == "__main__":
    main()
