"""GRPO for LLMs (DESIGN section 10): `torchrun -m prism_fast.rl`.

losses.py (pure loss / advantage math), config.py (the run's config tree), prompts.py (prompt sets + resumable
order), ref_policy.py (Polyak reference on FSDP2 shards), logprobs.py (packed fused log-probs), rollout.py
(generation + rewards), trainer.py (the loop), filter.py (difficulty filter CLI).
"""
