"""prism_fast: a performance-engineered mid-training -> RL -> analysis pipeline (PRISM) for dense Transformers
and attention-Mamba2 hybrids. Runs on one CPU for tests and demos, and on many GPUs through torchrun + FSDP2."""
__version__ = "0.1.0"
