"""Real pretrained model: SmolLM2-135M-Instruct (bundled Q4_1 GGUF).

The module fixture converts the GGUF once: our GGUF loader de-quantizes it (through transformers' GGUF utilities),
a transformers model is built from that config WITHOUT quantization_config, takes the de-quantized state dict and
is saved as an HF directory (transformers refuses save_pretrained on a GGUF-loaded model). We then load that
directory with our from_pretrained and compare logits, loss and greedy generations with transformers on real text.
(Parsing the GGUF costs ~10-20 s on 2 cores, mostly the 49k-token vocabulary: done once per module.)"""
import pytest
import torch
import transformers

from prism_fast.models import from_pretrained, generate, load_tokenizer, smollm2_gguf_path
from tests.models.hf_twin import assert_close, max_diff

TEXT = ["The quick brown fox jumps over the lazy dog. Paris is the capital and most populous city of France, "
        "with an estimated population of 2,102,650 residents.",
        "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n"]


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    gguf = smollm2_gguf_path()
    tok = load_tokenizer(gguf)
    from_gguf = from_pretrained(gguf)
    hf = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.for_model(**from_gguf.config.hf_config)).eval()
    hf.load_state_dict(from_gguf.state_dict())
    out = tmp_path_factory.mktemp("smollm2")
    hf.save_pretrained(out)
    tok.save_pretrained(out)
    return out, hf, tok, from_gguf


@pytest.mark.slow
def test_smollm2_logits_loss_and_generation_match_transformers(smol):
    path, hf, tok, from_gguf = smol
    ours = from_pretrained(path)
    assert ours.config.tie_word_embeddings and ours.num_params() == hf.num_parameters()
    gsd = from_gguf.state_dict()
    assert all(torch.equal(v, gsd[k]) for k, v in ours.state_dict().items())
    with torch.no_grad():
        for text in TEXT:
            ids = tok(text, return_tensors="pt").input_ids
            a, b = ours(ids), hf(ids).logits
            print(f"SmolLM2 fp32 logits max abs diff {max_diff(a, b):.3g} over {ids.shape[1]} tokens "
                  f"(max |logit| {b.abs().max().item():.1f})")
            assert_close(a, b, 1e-3, "SmolLM2 logits")
            labels = torch.cat([ids[:, 1:], torch.full((1, 1), -100)], 1)
            assert abs(ours(ids, labels=labels).item() - hf(ids, labels=ids).loss.item()) < 1e-4
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    new = generate(ours, [prompt, tok("Once upon a time").input_ids], max_new_tokens=12)
    ref = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)[0, len(prompt):].tolist()
    assert new[0] == ref[:len(new[0])]
    assert "Paris" in tok.decode(new[0])


def test_smollm2_tokenizer_from_gguf_and_directory(smol):
    path, _, tok, _ = smol
    dtok = load_tokenizer(path)
    assert isinstance(dtok, transformers.PreTrainedTokenizerFast)
    for text in TEXT:
        ids = dtok(text).input_ids
        assert ids == tok(text).input_ids and dtok.decode(ids) == text
