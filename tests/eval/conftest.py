"""A tiny random llama with the SmolLM2 tokenizer, saved as an HF directory: what `--model PATH` reads, but fast."""
import pytest
import torch


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from prism_fast.models import build_model, load_tokenizer, smollm2_hf_dir, tiny_config
    d = tmp_path_factory.mktemp("tiny_eval_model")
    tok = load_tokenizer(smollm2_hf_dir())
    torch.manual_seed(0)
    model = build_model(tiny_config("llama", vocab_size=len(tok), num_hidden_layers=2))
    model.init_weights()
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d
