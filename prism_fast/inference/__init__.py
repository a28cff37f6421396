"""prism_fast.inference: the rollout engine RL and evaluation call (DESIGN section 12; docs/inference.md).

    engine = Engine(model, max_batch=64, tokenizer=tok)
    outs = engine.generate(prompts, SamplingParams(temperature=1.0, max_new_tokens=256, n=8, seed=0))
    outs[i].outputs[j].token_ids / .logprobs / .text / .finish_reason;  engine.update_weights();  engine.stats

Continuous batching with slot refill on the model's KV / Mamba caches (engine.py, slots.py), packed prefill
(prefill.py), counter-based seeded sampling with exact log-probs (sampler.py), FSDP2 weight gathering
(weights.py). Sits on prism_fast.models and prism_fast.ops only.
"""
from prism_fast.inference.engine import Engine
from prism_fast.inference.params import Completion, RequestOutput, SamplingParams

__all__ = ["Completion", "Engine", "RequestOutput", "SamplingParams"]
