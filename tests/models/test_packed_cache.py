"""Packed batches (cu_seqlens) == per-document forwards; cached decoding == full forward (sliding window too);
generate == transformers' greedy generate; batched generation with different prompt lengths == one by one."""
import pytest
import torch

from prism_fast.models import generate
from tests.models.hf_twin import assert_close, twin


@pytest.mark.parametrize("family", ["llama", "mistral", "granite"])
def test_packed_equals_per_document(family):
    ours, _ = twin(family)
    lens = [5, 1, 17, 9, 13]                             # a 1-token document and ones longer than the window (7)
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    x = torch.randint(0, 256, (1, sum(lens)))
    packed = ours(x, cu_seqlens=cu)
    docs = torch.cat([ours(x[:, a:b]) for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())], dim=1)
    assert_close(packed, docs, 2e-5, f"{family} packed vs per-doc")
    # the packed loss with per-document labels equals the token-weighted mean of per-document losses
    labels = torch.full_like(x, -100)
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        labels[0, a:b - 1] = x[0, a + 1:b]
    loss = ours(x, cu_seqlens=cu, labels=labels)
    ref = torch.nn.functional.cross_entropy(docs[0], labels[0], ignore_index=-100)
    assert abs(loss.item() - ref.item()) < 1e-5


@pytest.mark.parametrize("family", ["llama", "mistral"])
@pytest.mark.parametrize("prefill", [0, 1, 6])
def test_cached_decoding_equals_full_forward(family, prefill):
    ours, _ = twin(family)
    T = 21                                                # > mistral window 7: the cache must apply the window
    x = torch.randint(0, 256, (3, T))
    full = ours(x)
    cache = ours.new_cache(3, 32)
    steps = [ours(x[:, :prefill], cache=cache)] if prefill else []
    steps += [ours(x[:, t:t + 1], cache=cache) for t in range(prefill, T)]
    assert cache.seqlens.tolist() == [T] * 3
    assert_close(torch.cat(steps, dim=1), full, 5e-5, f"{family} prefill={prefill} cached vs full")


def test_chunked_prefill_and_cache_errors():
    ours, _ = twin("mistral")
    x = torch.randint(0, 256, (2, 30))
    full = ours(x)
    cache = ours.new_cache(2, 30)
    out = torch.cat([ours(x[:, a:a + 10], cache=cache) for a in (0, 10, 20)], dim=1)
    assert_close(out, full, 5e-5, "chunked prefill")
    with pytest.raises(ValueError, match="cache overflow"):
        ours(x[:, :1], cache=cache)
    with pytest.raises(ValueError, match="batch size"):
        ours(x[:1, :1], cache=ours.new_cache(2, 8))
    with pytest.raises(ValueError, match="cannot be combined"):
        ours(x[:1], cache=ours.new_cache(1, 64), cu_seqlens=torch.tensor([0, 30], dtype=torch.int32))


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_greedy_generate_matches_transformers(family):
    ours, hf = twin(family, std=0.3)
    prompts = [[3, 4, 5], [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]]
    out = generate(ours, prompts, max_new_tokens=10, eos_token_id=[])
    for p, o in zip(prompts, out):
        ref = hf.generate(torch.tensor([p]), max_new_tokens=10, do_sample=False, eos_token_id=None,
                          pad_token_id=0)[0, len(p):].tolist()
        assert o == ref


def test_batched_generate_equals_one_by_one_and_stops_at_eos():
    ours, _ = twin("llama", std=0.3)
    prompts = [[3, 4, 5], [9] * 12, [1]]
    batched = generate(ours, prompts, max_new_tokens=8, eos_token_id=[])
    single = [generate(ours, [p], max_new_tokens=8, eos_token_id=[])[0] for p in prompts]
    assert batched == single
    eos = batched[1][3]
    stopped = generate(ours, prompts, max_new_tokens=8, eos_token_id=eos)
    for full, s in zip(batched, stopped):
        cut = full.index(eos) + 1 if eos in full else len(full)
        assert s == full[:cut]


def test_sampling_is_seeded_and_top_p_tiny_is_greedy():
    ours, _ = twin("llama", std=0.3)
    prompts = [[3, 4, 5], [6, 7]]
    a = generate(ours, prompts, max_new_tokens=6, temperature=1.0, seed=123, eos_token_id=[])
    b = generate(ours, prompts, max_new_tokens=6, temperature=1.0, seed=123, eos_token_id=[])
    assert a == b
    greedy = generate(ours, prompts, max_new_tokens=6, eos_token_id=[])
    assert generate(ours, prompts, max_new_tokens=6, temperature=1.0, top_p=1e-6, seed=1, eos_token_id=[]) == greedy
    with pytest.raises(ValueError, match="at least one token"):
        generate(ours, [[]], max_new_tokens=2)
