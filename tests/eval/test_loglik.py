"""Log-likelihood MC scorer vs a direct transformers computation on the real SmolLM2-135M."""
import pytest
import torch

from prism_fast.eval.loglik import encode_pair, loglikelihood, multiple_choice


@pytest.fixture(scope="module")
def smollm2():
    from prism_fast.models import from_pretrained, load_tokenizer, smollm2_hf_dir
    d = smollm2_hf_dir()
    return d, from_pretrained(d), load_tokenizer(d)


def test_loglik_equals_transformers(smollm2):
    from transformers import AutoModelForCausalLM
    d, model, tok = smollm2
    reqs = [("Question: What gas do plants take in?\nAnswer:", " carbon dioxide"),
            ("The capital of France is ", "Paris"),                      # trailing space moves to the continuation
            ("2 + 2 =", " 4"), ("", "Hello world")]                      # empty context: EOS prefix
    ours = loglikelihood(model, tok, reqs, batch_size=3)                 # batches mix lengths: padding exercised
    hf = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32).eval()
    for (c, x), got in zip(reqs, ours):
        ctx, cont = encode_pair(tok, c, x)
        ids = torch.tensor([ctx + cont])
        with torch.no_grad():
            logp = torch.log_softmax(hf(ids).logits.float(), -1)[0]
        ref = sum(logp[len(ctx) - 1 + t, cont[t]].item() for t in range(len(cont)))
        assert got == pytest.approx(ref, abs=2e-3), (c, x, got, ref)
    assert encode_pair(tok, "The capital of France is ", "Paris")[1] == tok(" Paris", add_special_tokens=False)[
        "input_ids"]


def test_multiple_choice_acc_and_acc_norm(smollm2):
    _, model, tok = smollm2
    items = [{"context": "Question: What color is the clear daytime sky?\nAnswer:",
              "choices": [" blue", " a deep shade of green that is rarely seen", " loud"], "gold": 0},
             {"context": "Question: How many legs does a spider have?\nAnswer:", "choices": [" eight", " two"],
              "gold": 0}]
    res = multiple_choice(model, tok, items)
    assert res["n"] == 2 and 0 <= res["acc"] <= 100 and 0 <= res["acc_norm"] <= 100
    for it, ll in zip(items, res["loglik"]):                             # acc / acc_norm follow their definitions
        assert len(ll) == len(it["choices"])
    acc = sum(max(range(len(ll)), key=ll.__getitem__) == it["gold"] for it, ll in zip(items, res["loglik"]))
    norm = sum(max(range(len(ll)), key=lambda k: ll[k] / len(it["choices"][k])) == it["gold"]
               for it, ll in zip(items, res["loglik"]))
    assert res["acc"] == 50.0 * acc and res["acc_norm"] == 50.0 * norm
