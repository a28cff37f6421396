"""`make demo` (python -m prism_fast.demo): a real, short greedy generation with SmolLM2-135M-Instruct.

Loads the bundled Q4_1 GGUF (de-quantized to fp32 through our loader), builds chat prompts with the model's own
template, generates a batch of answers with the KV cache, and prints the text plus prefill / decode throughput.
Runs on CPU in well under a minute (most of it is parsing the GGUF's 49k-token vocabulary).
"""
from __future__ import annotations

import argparse
import time

import torch

from prism_fast.models import from_pretrained, generate, load_tokenizer, smollm2_gguf_path

QUESTIONS = ["What is the capital of France?", "Give me three tips for writing clear Python code.",
             "Explain in one sentence what a language model is."]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    path = smollm2_gguf_path()
    t0 = time.perf_counter()
    model = from_pretrained(path, device=args.device)
    tok = load_tokenizer(path)
    print(f"loaded {path.name} ({model.num_params() / 1e6:.0f}M params, {model.config.model_type}) "
          f"in {time.perf_counter() - t0:.1f} s")
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                       tokenize=True, return_dict=True)["input_ids"] for q in QUESTIONS]
    generate(model, prompts[:1], max_new_tokens=2)                        # warm-up (allocator, first-call costs)
    t0 = time.perf_counter()
    outs = generate(model, prompts, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                    top_p=args.top_p, seed=0)
    dt = time.perf_counter() - t0
    for q, o in zip(QUESTIONS, outs):
        print(f"\n>>> {q}\n{tok.decode(o, skip_special_tokens=True).strip()}")
    n_new = sum(len(o) for o in outs)
    dev = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\n{len(prompts)} sequences, {sum(map(len, prompts))} prompt + {n_new} generated tokens in {dt:.2f} s: "
          f"{n_new / dt:.1f} generated tokens/s (batched greedy decode with KV cache, fp32, {dev})")


if __name__ == "__main__":
    main()
