"""The real SmolLM2-135M-Instruct: greedy engine output == transformers' greedy generate (chat-template prompts
of different lengths, string prompts through the tokenizer), and a stop string spanning a token boundary."""
import pytest
import torch
import transformers

from prism_fast.inference import Engine, SamplingParams
from prism_fast.models import from_pretrained, smollm2_hf_dir


@pytest.fixture(scope="module")
def smollm2():
    d = smollm2_hf_dir()
    return d, from_pretrained(d).eval(), transformers.AutoTokenizer.from_pretrained(d)


def test_smollm2_greedy_matches_transformers_and_stop_string_spans_tokens(smollm2):
    d, model, tok = smollm2
    questions = ["What is 2 + 3?", "Name a colour of the sky on a clear day and explain why in one sentence."]
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
               for q in questions]
    prompts = [list(p["input_ids"]) if isinstance(p, dict) or hasattr(p, "keys") else list(p) for p in prompts]
    engine = Engine(model, max_batch=2, tokenizer=tok)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=12)
    outs = engine.generate(prompts + ["The capital of France is"], greedy)
    hf = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    for p, out in zip(prompts, outs):
        ref = hf.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False, pad_token_id=tok.eos_token_id)
        ref = ref[0, len(p):].tolist()
        assert out.outputs[0].token_ids == ref
        assert out.outputs[0].text == tok.decode(ref, skip_special_tokens=True)
    assert outs[2].prompt == "The capital of France is" and outs[2].prompt_token_ids == tok("The capital of France is")["input_ids"]

    toks = outs[1].outputs[0].token_ids
    pieces = [tok.decode([t]) for t in toks]
    b = next(i for i in range(2, len(toks)) if len(pieces[i - 1].strip()) >= 2 and len(pieces[i].strip()) >= 2)
    stop = pieces[b - 1][-2:] + pieces[b][:2]                  # ends inside token b, starts inside token b - 1
    full_text = outs[1].outputs[0].text
    stopped = engine.generate(prompts[1:2], SamplingParams(temperature=0.0, max_new_tokens=12, stop=[stop]))
    c = stopped[0].outputs[0]
    assert c.finish_reason == "stop"
    assert c.token_ids == toks[:b + 1] and len(c.logprobs) == b + 1
    assert c.text == full_text[:full_text.index(stop)]
