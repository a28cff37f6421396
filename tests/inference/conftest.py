"""Tiny random models of the five families, shared by the engine tests (module-scoped: built once)."""
import pytest
import torch

from prism_fast.models import build_model, tiny_config

FAMILIES = ["llama", "mistral", "granite", "granitemoehybrid", "nemotron_h"]


def tiny_model(family: str, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(tiny_config(family))
    model.init_weights(std=0.2)          # larger than the default: peaked distributions, distinct argmaxes
    return model.eval()


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request):
    return request.param, tiny_model(request.param)


def reference_greedy(model, prompt, max_new, stop_ids=()):
    """Full recompute per token (no cache): the model's own argmax continuation and its log-softmax values."""
    ids, lps = list(prompt), []
    with torch.no_grad():
        for _ in range(max_new):
            logits = model(torch.tensor([ids]))[0, -1].float()
            t = int(logits.argmax())
            lps.append(float(torch.log_softmax(logits, -1)[t]))
            ids.append(t)
            if t in stop_ids:
                break
    return ids[len(prompt):], lps
