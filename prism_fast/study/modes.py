"""Sizes of the study per mode. Every number here is part of the stage keys (study/cache.py), so editing one re-runs
exactly the stages that use it.

Budgets on an idle 2-core CPU: full < 60 min, quick < 15 min, smoke ~1-2 min (a 2-layer SmolLM2 slice: SmolLM2's
trained embeddings and first 2 blocks, which write word-like text, so RL advantages are non-zero and every stage
has real work to do; a random model would give all-zero rewards).

`est_s` are rough seconds per stage on that machine, used only to weight the progress bar's ETA.
"""
from __future__ import annotations

MODES: dict[str, dict] = {
    "smoke": {
        "model": "slice2",
        "mt": {"steps": 3, "global_batch_size": 2, "seq_len": 64, "val_batches": 1},
        "rl": {"steps": 2, "prompts_per_step": 2, "group_size": 4, "max_new_tokens": 8, "lr": 1e-4,
               "repetition_penalty": 1.0},
        "eval": {"limit": 2, "n": 1, "max_new_tokens": 16},
        "heldout": {"seq_len": 64, "rows_per_domain": 1},
        "cka": {"num_inputs": 8, "resamples": 4, "resample_size": 6, "max_tokens": 32},
        "landscape": {"grid": [0.0, 1.0], "num_eval": 4, "max_tokens": 32},
        "est_s": {"base": 5, "mt": 25, "rl": 25, "eval": 10, "weights": 5, "direction": 5, "cka": 10,
                  "landscape": 10, "report": 2},
    },
    "quick": {
        "model": "smollm2",
        "mt": {"steps": 12, "global_batch_size": 4, "seq_len": 256, "val_batches": 2},
        "rl": {"steps": 6, "prompts_per_step": 4, "group_size": 8, "max_new_tokens": 32, "lr": 2e-5,
               "repetition_penalty": 0.0},
        "eval": {"limit": 6, "n": 2, "max_new_tokens": 64},
        "heldout": {"seq_len": 256, "rows_per_domain": 2},
        "cka": {"num_inputs": 24, "resamples": 10, "resample_size": 16, "max_tokens": 64},
        "landscape": {"grid": [0.0, 1.0], "num_eval": 8, "max_tokens": 64},
        "est_s": {"base": 2, "mt": 150, "rl": 110, "eval": 45, "weights": 15, "direction": 15, "cka": 40,
                  "landscape": 40, "report": 3},
    },
    "full": {
        "model": "smollm2",
        "mt": {"steps": 60, "global_batch_size": 4, "seq_len": 256, "val_batches": 4},
        "rl": {"steps": 24, "prompts_per_step": 4, "group_size": 8, "max_new_tokens": 32, "lr": 2e-5,
               "repetition_penalty": 0.0},
        "eval": {"limit": 20, "n": 4, "max_new_tokens": 192},
        "heldout": {"seq_len": 256, "rows_per_domain": 4},
        "cka": {"num_inputs": 100, "resamples": 20, "resample_size": 50, "max_tokens": 128},
        "landscape": {"grid": [-0.5, 0.0, 0.5, 1.0, 1.5], "num_eval": 32, "max_tokens": 128},
        "est_s": {"base": 2, "mt": 600, "rl": 480, "eval": 200, "weights": 15, "direction": 15, "cka": 150,
                  "landscape": 300, "report": 3},
    },
}
