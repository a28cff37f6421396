"""Engine correctness on tiny models of all five families: greedy == full-recompute argmax (packed prefill, slot
refill), log-probs == a full forward's, seeded sampling independent of batching, n samples share one prefill,
finish reasons, packed prefill state == per-prompt prefill state, update_weights, errors."""
import dataclasses

import pytest
import torch

from prism_fast.inference import Engine, SamplingParams
from prism_fast.inference.prefill import prefill_packed, prefill_rows, shared_prefix_len
from tests.inference.conftest import reference_greedy, tiny_model

# uneven prompts (1 token .. longer than mistral's window 7 and the Mamba chunk) and uneven answers
PROMPTS = [[5, 6, 7], [9] * 19, [1], [3, 4, 8, 10, 12, 14, 16, 18, 20, 22, 24], [2, 30], [40, 41, 42, 43, 44]]
MAX_NEW = [9, 3, 12, 1, 6, 7]


def test_greedy_equals_full_recompute_all_families(family_model):
    family, model = family_model
    engine = Engine(model, max_batch=3)                     # 6 requests on 3 slots: slots are refilled
    params = [SamplingParams(temperature=0.0, max_new_tokens=n, ignore_eos=True) for n in MAX_NEW]
    outs = engine.generate(PROMPTS, params)
    for p, n, out in zip(PROMPTS, MAX_NEW, outs):
        ref, ref_lp = reference_greedy(model, p, n)
        c = out.outputs[0]
        assert c.token_ids == ref, family
        assert max(abs(a - b) for a, b in zip(c.logprobs, ref_lp)) <= 1e-5, family
        assert c.finish_reason == "length" and out.prompt_token_ids == p
    assert engine.stats["prefill_tokens"] == sum(map(len, PROMPTS))
    assert engine.stats["decode_tokens"] == sum(MAX_NEW) - len(MAX_NEW)


@pytest.mark.parametrize("family", ["llama", "nemotron_h", "granitemoehybrid"])
def test_packed_prefill_writes_the_same_cache_as_per_prompt_prefill(family):
    model = tiny_model(family)
    prompts, slots = [[5, 6, 7, 8, 9, 10, 11], [3], [1, 2], [7] * 40], [3, 0, 2, 1]
    caches = [model.new_cache(4, 64), model.new_cache(4, 64)]
    for c in caches:                                          # stale state must be cleared by the prefill
        for layer in filter(None, c.layers):
            for t in vars(layer).values():
                t.normal_()
    with torch.no_grad():
        a = prefill_packed(model, caches[0], prompts, slots)
        b = prefill_rows(model, caches[1], prompts, slots)
    torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)
    assert caches[0].seqlens.tolist() == caches[1].seqlens.tolist() == [1, 40, 2, 7]
    for la, lb in zip(filter(None, caches[0].layers), filter(None, caches[1].layers)):
        for name, ta in vars(la).items():
            tb = getattr(lb, name)
            if name in ("k", "v"):                            # only the cached positions are meaningful
                for s, p in zip(slots, prompts):
                    torch.testing.assert_close(ta[s, :len(p)], tb[s, :len(p)], atol=2e-5, rtol=1e-5)
            else:
                torch.testing.assert_close(ta, tb, atol=2e-5, rtol=1e-5, msg=name)


# a 10-token "system prompt" (longer than mistral's window 7) shared by prompts of uneven tails
SYSTEM = [11, 12, 13, 14, 15, 16, 17, 18, 19, 20]
SHARED = [SYSTEM + [5, 6, 7], SYSTEM + [9] * 19, SYSTEM + [1], SYSTEM + [40, 41]]


def test_shared_prefix_len():
    assert shared_prefix_len(SHARED) == 10
    assert shared_prefix_len([SYSTEM + [1], SYSTEM + [2]], min_len=11) == 0          # too short to be worth it
    assert shared_prefix_len([SYSTEM, SYSTEM + [3]]) == 9                            # each prompt keeps a token
    assert shared_prefix_len([SYSTEM + [1]]) == 0 and shared_prefix_len([SYSTEM, [11] + SYSTEM]) == 0


@pytest.mark.parametrize("family", ["llama", "mistral", "granite"])
def test_shared_prefix_prefill_writes_the_same_cache_as_per_prompt_prefill(family):
    """The prefix computed once (then copied) + suffixes attending to it == every prompt prefilled alone."""
    model = tiny_model(family)
    slots = [2, 0, 3, 1]
    caches = [model.new_cache(4, 64), model.new_cache(4, 64)]
    for c in caches:
        for layer in filter(None, c.layers):
            for t in vars(layer).values():
                t.normal_()
    with torch.no_grad():
        a = prefill_packed(model, caches[0], SHARED, slots, prefix=10)
        b = prefill_rows(model, caches[1], SHARED, slots)
    torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)
    assert caches[0].seqlens.tolist() == caches[1].seqlens.tolist()
    for la, lb in zip(filter(None, caches[0].layers), filter(None, caches[1].layers)):
        for s, p in zip(slots, SHARED):
            torch.testing.assert_close(la.k[s, :len(p)], lb.k[s, :len(p)], atol=2e-5, rtol=1e-5)
            torch.testing.assert_close(la.v[s, :len(p)], lb.v[s, :len(p)], atol=2e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="same 11 tokens"):
        prefill_packed(model, caches[0], SHARED, slots, prefix=11)


@pytest.mark.parametrize("family", ["llama", "mistral", "nemotron_h"])
def test_engine_shares_the_prefix_and_generates_the_same(family):
    """Greedy continuations with prefix sharing == the full-recompute reference; hybrids do not share (their Mamba
    state cannot branch mid-prompt) and still generate the same."""
    model = tiny_model(family)
    engine = Engine(model, max_batch=8)
    outs = engine.generate(SHARED, SamplingParams(temperature=0.0, max_new_tokens=5, ignore_eos=True))
    for p, out in zip(SHARED, outs):
        ref, ref_lp = reference_greedy(model, p, 5)
        assert out.outputs[0].token_ids == ref, family
        assert max(abs(a - b) for a, b in zip(out.outputs[0].logprobs, ref_lp)) <= 1e-5
    assert engine.stats["prefix_shared_tokens"] == (0 if family == "nemotron_h" else 10 * 3)
    off = Engine(model, max_batch=8, prefix_sharing=False)
    off.generate(SHARED, SamplingParams(temperature=0.0, max_new_tokens=5, ignore_eos=True))
    assert off.stats["prefix_shared_tokens"] == 0


@pytest.mark.parametrize("family", ["llama", "granite", "nemotron_h"])
def test_sampled_logprobs_equal_the_trainers_logprobs(family):
    """No truncation: recorded log-probs == model(ids, logprobs_of=..., temperature=T) (granite: logits_scaling)."""
    model = tiny_model(family)
    engine = Engine(model, max_batch=4)
    T = 0.7
    outs = engine.generate(PROMPTS[:4], SamplingParams(temperature=T, max_new_tokens=8, seed=3, n=2,
                                                       ignore_eos=True))
    for p, out in zip(PROMPTS, outs):
        for c in out.outputs:
            ids = torch.tensor([p + c.token_ids])
            with torch.no_grad():
                ref = model(ids[:, :-1], logprobs_of=ids[:, 1:], temperature=T)[0, len(p) - 1:]
            assert torch.allclose(torch.tensor(c.logprobs), ref, atol=1e-5), (family, c.logprobs, ref)


def test_truncated_logprobs_are_of_the_renormalized_distribution():
    model = tiny_model("llama")
    params = SamplingParams(temperature=1.3, top_k=20, top_p=0.8, min_p=0.05, max_new_tokens=6, seed=11,
                            ignore_eos=True)
    out = Engine(model, max_batch=2).generate(PROMPTS[:3], params)
    for p, o in zip(PROMPTS, out):
        ids = p + o.outputs[0].token_ids
        with torch.no_grad():
            logits = model(torch.tensor([ids]))[0, len(p) - 1:-1].double() / 1.3
        for row, tok, lp in zip(logits, o.outputs[0].token_ids, o.outputs[0].logprobs):
            probs, order = torch.softmax(row, -1).sort(descending=True)
            probs = probs[:20] / probs[:20].sum()
            probs = probs[:int(((probs.cumsum(0) - probs) < 0.8).sum())]
            probs = probs / probs.sum()
            probs = probs[:int((probs >= 0.05 * probs[0]).sum())]
            probs = probs / probs.sum()
            kept = order[:len(probs)].tolist()
            assert tok in kept
            assert abs(lp - float(probs[kept.index(tok)].log())) < 1e-5


def test_seeded_samples_do_not_depend_on_batching():
    model = tiny_model("nemotron_h")
    params = [SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=n, seed=7, n=2, ignore_eos=True)
              for n in MAX_NEW]
    runs = [Engine(model, max_batch=b, sync_every=k, packed_prefill=pk).generate(PROMPTS, params)
            for b, k, pk in [(16, 1, True), (3, 1, True), (1, 4, False), (5, 3, True)]]
    first = [[c.token_ids for c in o.outputs] for o in runs[0]]
    for r in runs[1:]:
        assert [[c.token_ids for c in o.outputs] for o in r] == first
    assert any(a != b for a, b in first)                      # the two samples of a request differ
    again = Engine(model, max_batch=16).generate(PROMPTS, params)
    assert [[c.token_ids for c in o.outputs] for o in again] == first
    other = Engine(model, max_batch=16).generate(PROMPTS, [dataclasses.replace(p, seed=8) for p in params])
    assert [[c.token_ids for c in o.outputs] for o in other] != first


def test_n_samples_share_one_prefill_and_slot_refill_keeps_rows_busy():
    model = tiny_model("granitemoehybrid")
    engine = Engine(model, max_batch=8)
    prompts = [[4] * 30, [5, 6], [7] * 12]
    params = SamplingParams(temperature=1.0, max_new_tokens=5, n=4, seed=0, ignore_eos=True)
    outs = engine.generate(prompts, params)
    assert engine.stats["prefill_tokens"] == 30 + 2 + 12                       # once per prompt, not per sample
    assert all(len(o.outputs) == 4 and [c.index for c in o.outputs] == [0, 1, 2, 3] for o in outs)
    # each sample equals the same request generated with a prefill of its own (max_batch=1: one slot)
    single = Engine(model, max_batch=1).generate(prompts, params)
    assert [[c.token_ids for c in o.outputs] for o in outs] == [[c.token_ids for c in o.outputs] for o in single]

    engine = Engine(model, max_batch=2)
    lens = [1, 40, 1, 1, 1, 1, 1, 1]                           # one long answer among short ones
    outs = engine.generate([[3, 4]] * 8, [SamplingParams(temperature=0, max_new_tokens=n, ignore_eos=True)
                                          for n in lens])
    assert [len(o.outputs[0].token_ids) for o in outs] == lens
    # the short ones flowed through the second slot while the long one ran: 40 steps, not 40 + 7 batches
    assert engine.stats["decode_steps"] <= 40

    # draining batch: the long completion in the last slot moves down (KV + Mamba state), rows shrink to 1
    engine = Engine(model, max_batch=4)
    prompts, lens = [[3, 4], [5] * 9, [6, 7, 8], [9] * 13], [2, 3, 2, 25]
    outs = engine.generate(prompts, [SamplingParams(temperature=0, max_new_tokens=n, ignore_eos=True) for n in lens])
    for p, n, o in zip(prompts, lens, outs):
        assert o.outputs[0].token_ids == reference_greedy(model, p, n)[0]
    assert engine.stats["slot_moves"] >= 1 and engine.stats["decode_rows"] <= 4 * 3 + 22


def test_finish_reasons_eos_stop_ids_and_length():
    model = tiny_model("llama")
    greedy = SamplingParams(temperature=0.0, max_new_tokens=10, ignore_eos=True)
    free = Engine(model).generate(PROMPTS[:2], greedy)
    toks = free[0].outputs[0].token_ids
    stop_tok = toks[4]
    cut = toks.index(stop_tok) + 1
    out = Engine(model).generate(PROMPTS[:2], SamplingParams(temperature=0.0, max_new_tokens=10, ignore_eos=True,
                                                             stop_token_ids=[stop_tok]))
    assert out[0].outputs[0].token_ids == toks[:cut] and out[0].outputs[0].finish_reason == "stop"
    model.config.eos_token_id = stop_tok                       # the model's EOS ids stop unless ignore_eos
    try:
        eos_out = Engine(model).generate(PROMPTS[:1], SamplingParams(temperature=0.0, max_new_tokens=10))
    finally:
        model.config.eos_token_id = 2
    assert eos_out[0].outputs[0].token_ids == toks[:cut] and eos_out[0].outputs[0].finish_reason == "stop"
    assert free[1].outputs[0].finish_reason == "length" and len(free[1].outputs[0].token_ids) == 10


def test_update_weights_uses_the_new_weights():
    model = tiny_model("mistral")
    engine = Engine(model, max_batch=4)
    params = SamplingParams(temperature=0.0, max_new_tokens=6, ignore_eos=True)
    before = [o.outputs[0].token_ids for o in engine.generate(PROMPTS, params)]
    with torch.no_grad():                                      # an "optimizer step"
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    engine.update_weights()
    after = [o.outputs[0].token_ids for o in engine.generate(PROMPTS, params)]
    assert after != before
    assert after == [reference_greedy(model, p, 6)[0] for p in PROMPTS]
    assert engine.weights_version == 1


def test_clear_errors():
    model = tiny_model("llama")
    engine = Engine(model)
    assert engine.generate([]) == []
    with pytest.raises(ValueError, match="at least one token"):
        engine.generate([[1], []])
    with pytest.raises(ValueError, match="tokenizer"):
        engine.generate(["hello"])
    with pytest.raises(ValueError, match="one per prompt"):
        engine.generate([[1], [2]], [SamplingParams()] * 3)
    with pytest.raises(ValueError, match="max_tokens_in_flight"):
        Engine(model, max_tokens_in_flight=10).generate([[1] * 8], SamplingParams(max_new_tokens=5))
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
