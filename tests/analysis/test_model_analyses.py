"""CKA and landscape on real prism_fast.models checkpoints (tiny, saved with save_pretrained) and the CLI commands
end to end (in-process; test_memory.py runs `python -m prism_fast.analyze weights` in a subprocess).
SmolLM2-135M end to end runs in bench/bench_analysis.py --smollm2: loading its GGUF takes 60-130 s on 2 loaded
cores, beyond this area's test budget."""
import json

import pytest
import torch

from prism_fast import models
from prism_fast.analysis import cka_compare, landscape, next_token_loss
from prism_fast.analysis.cka import load_inputs, pooled_hidden_states
from prism_fast.analysis.cli import main as cli_main
from prism_fast.analysis.landscape import set_interpolated
from prism_fast.analysis.readers import open_checkpoint


def _train_tokenizer(vocab_size=512):
    """A real BPE tokenizer trained on the bundled inputs (converting SmolLM2's GGUF tokenizer takes ~20 s)."""
    from tokenizers import Tokenizer, models as tm, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from prism_fast.analysis.cka import BUNDLED_INPUTS

    tk = Tokenizer(tm.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    texts = [t for name in BUNDLED_INPUTS for t in load_inputs(name)[1]]
    tk.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """base, mt = base + noise everywhere, rl = mt + small noise, and layer2 = base with block 2 perturbed.
    Tiny llama (4 blocks), tied embeddings (lm_head not saved), each dir with its tokenizer."""
    root = tmp_path_factory.mktemp("ck")
    torch.manual_seed(0)
    tok = _train_tokenizer()
    cfg = models.tiny_config("llama", vocab_size=len(tok), tie_word_embeddings=True, num_hidden_layers=4)
    model = models.build_model(cfg)
    model.init_weights()
    paths = {}

    def save(name):
        model.save_pretrained(root / name)
        tok.save_pretrained(str(root / name))
        paths[name] = root / name

    save("base")
    sd0 = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    save("mt")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.005 * torch.randn_like(p))
    save("rl")
    model.load_state_dict(sd0)
    with torch.no_grad():
        for p in model.blocks[2].parameters():
            p.add_(0.5 * torch.randn_like(p))
    save("layer2")
    return paths


def test_cka_self_is_one_and_detects_the_perturbed_layer(ckpts):
    r = cka_compare(ckpts["base"], ckpts["base"], ["prose", "math"], num_inputs=24, num_resamples=4,
                    resample_size=16, max_tokens=32)
    assert set(r["distributions"]) == {"prose", "math", "all"}
    for d in r["distributions"].values():
        assert d["layer_cka"] == pytest.approx([1.0] * 5, abs=1e-9)  # embeddings + 4 blocks
        assert d["min_cka_mean"] == pytest.approx(1.0, abs=1e-9)
    r = cka_compare(ckpts["base"], ckpts["layer2"], ["prose"], num_inputs=24, num_resamples=4,
                    resample_size=16, max_tokens=32)
    per = r["distributions"]["prose"]["layer_cka"]
    # hidden state i is the output of block i-1: blocks 0, 1 untouched -> states 0..2 identical; block 2 changed
    assert per[:3] == pytest.approx([1.0] * 3, abs=1e-9)
    assert per[3] < 0.999
    assert r["distributions"]["prose"]["argmin_layer"] >= 3


def test_pooled_states_prism_vs_transformers(ckpts):
    from transformers import AutoModelForCausalLM

    tok = models.load_tokenizer(ckpts["base"])
    texts = load_inputs("web", 3)[1]
    ours = pooled_hidden_states(models.from_pretrained(ckpts["base"]).eval(), tok, texts, max_tokens=40)
    hf = pooled_hidden_states(AutoModelForCausalLM.from_pretrained(str(ckpts["base"])).eval(), tok, texts,
                              max_tokens=40)
    assert ours.shape == (3, 5, 64) or ours.shape[:2] == (3, 5)
    torch.testing.assert_close(ours, hf, atol=2e-5, rtol=1e-4)


def _mean_loss_of(path, texts):
    return next_token_loss(models.from_pretrained(path).eval(), models.load_tokenizer(path), texts, max_tokens=48)


def test_landscape_corners_equal_the_checkpoints(ckpts):
    texts = load_inputs("prose", 6)[1]
    # default score: next-token loss on the first num_eval lines of the bundled prose set
    r = landscape(ckpts["base"], ckpts["mt"], ckpts["rl"], alphas=(0.0, 1.0), betas=(0.0, 1.0), num_eval=6,
                  max_tokens=48)
    m = r["matrices"]["next_token_loss"]
    assert m[0][0] == pytest.approx(_mean_loss_of(ckpts["base"], texts), rel=1e-5)
    assert m[1][0] == pytest.approx(_mean_loss_of(ckpts["mt"], texts), rel=1e-5)
    assert m[1][1] == pytest.approx(_mean_loss_of(ckpts["rl"], texts), rel=1e-5)
    assert m[0][0] != pytest.approx(m[1][0], rel=1e-3)


def test_interpolated_weights_formula(ckpts):
    model = models.from_pretrained(ckpts["base"])
    readers = [open_checkpoint(ckpts[k]) for k in ("base", "mt", "rl")]
    n = set_interpolated(model, readers, 0.5, -0.5)
    assert n == len(readers[0].names())
    name = "model.layers.1.mlp.up_proj.weight"
    wb, wm, wr = (r.read(name).float() for r in readers)
    torch.testing.assert_close(model.state_dict()[name], wb + 0.5 * (wm - wb) - 0.5 * (wr - wm), atol=1e-6,
                               rtol=1e-6)
    # tied: the LM head follows the interpolated embedding
    assert model.lm_head_module().weight.data_ptr() == model.embed_tokens_module().weight.data_ptr()


def test_cli_weights_direction_trajectory_landscape(ckpts, tmp_path):
    out = tmp_path / "out"
    r = cli_main(["weights", "--base", str(ckpts["base"]), "--new", str(ckpts["mt"]), "--new", str(ckpts["rl"]),
                  "--out", str(out), "--no-progress"])
    assert r["pairs"][1]["group"]["all"]["rel_change"] > r["pairs"][0]["group"]["all"]["rel_change"] > 0
    assert "lm_head" not in r["pairs"][0]["component"]  # tied, not saved
    for f in ("weights.json", "weights.md", "weights_components.png", "weights_layers.png"):
        assert (out / f).stat().st_size > 0
    j = json.loads((out / "weights.json").read_text())
    assert j["thresholds"] == ["0.1%", "0.5%", "1%", "2%", "5%", "10%"] and j["rules"]
    r = cli_main(["direction", "--base", str(ckpts["base"]), "--new", str(ckpts["mt"]), "--new", str(ckpts["rl"]),
                  "--out", str(out), "--no-progress"])
    assert 0.9 < r["group"]["all"]["cosine"] < 1.0  # rl = mt + small noise: nearly the same update
    (tmp_path / "run").mkdir()
    for step, k in ((0, "base"), (100, "mt"), (200, "rl")):
        (tmp_path / "run" / f"step-{step}").symlink_to(ckpts[k])
    r = cli_main(["trajectory", "--ckpts", str(tmp_path / "run"), "--out", str(out), "--no-progress"])
    assert r["steps"] == [0, 100, 200] and r["series"]["all"]["front_step_rel"] == 100
    r = cli_main(["landscape", "--base", str(ckpts["base"]), "--mt", str(ckpts["mt"]), "--rl", str(ckpts["rl"]),
                  "--alphas", "0,1", "--betas", "0", "--num-eval", "4", "--max-tokens", "24",
                  "--score", "tests.analysis.score_fns:param_norm", "--out", str(out), "--no-progress"])
    assert set(r["matrices"]) == {"param_norm", "loss_proxy"}
    assert (out / "landscape_param_norm.png").stat().st_size > 0
    for f in ("direction.md", "trajectory.md", "trajectory.png", "landscape.md", "direction.png"):
        assert (out / f).stat().st_size > 0


def test_cli_cka(ckpts, tmp_path, capsys):
    r = cli_main(["cka", "--a", str(ckpts["base"]), "--b", str(ckpts["layer2"]), "--num-inputs", "8",
                  "--resamples", "3", "--resample-size", "8", "--max-tokens", "24", "--out", str(tmp_path),
                  "--no-progress"])
    assert set(r["distributions"]) == {"prose", "web", "math", "all"}  # the bundled sets by default
    j = json.loads((tmp_path / "cka.json").read_text())
    d = j["distributions"]["all"]
    assert d["n"] == 24 and len(d["layer_cka"]) == 5 and d["layer_cka"][0] == pytest.approx(1.0, abs=1e-9)
    md = (tmp_path / "cka.md").read_text()
    assert "bootstrap min mean +- std" in md and (tmp_path / "cka.png").stat().st_size > 0
    with pytest.raises(SystemExit):  # user error: message, exit code 2, no traceback
        cli_main(["cka", "--a", str(ckpts["base"]), "--b", str(ckpts["base"]), "--inputs", "nope.txt",
                  "--out", str(tmp_path)])
    assert "not a file and not a bundled set" in capsys.readouterr().err


def test_trainer_dcp_checkpoints(ckpts, tmp_path):
    """Checkpoints written by the real trainer Checkpointer (DCP: {"model", "optim"}, step-N dirs, COMPLETE marker)
    compare exactly like the HF exports of the same weights, feed `trajectory`, and load for CKA."""
    import warnings

    from prism_fast.analysis import trajectory, weight_change
    from prism_fast.analysis.modeling import load_model
    from prism_fast.train.checkpoint import Checkpointer, Config

    ck = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DCP without a process group
        for step, k in ((0, "base"), (10, "mt")):
            model = models.from_pretrained(ckpts[k])
            opt = torch.optim.AdamW(model.parameters())
            ck = ck or Checkpointer(Config(keep_last=0), tmp_path / "run", rank=0, world_size=1,
                                    model_hf_config=model.config.hf_config)
            ck.save(step, model, opt, {})
    (tmp_path / "run" / "checkpoints" / "step-20.tmp").mkdir()  # an interrupted write: must be skipped
    dcp0, dcp10 = (tmp_path / "run" / "checkpoints" / f"step-{s}" for s in (0, 10))
    same = weight_change(ckpts["base"], dcp0)["pairs"][0]["group"]["all"]
    assert same["rel_change"] == 0.0 and same["changed_frac"]["0.1%"] == 0.0
    via_hf = weight_change(ckpts["base"], ckpts["mt"])["pairs"][0]
    via_dcp = weight_change(dcp0, dcp10)["pairs"][0]
    for key, v in via_hf["component"].items():
        assert via_dcp["component"][key]["changed_frac"] == v["changed_frac"], key
        assert via_dcp["component"][key]["rel_change"] == pytest.approx(v["rel_change"], rel=1e-6), key
    r = trajectory(tmp_path / "run" / "checkpoints")
    assert r["steps"] == [0, 10]
    assert r["series"]["all"]["rel_change"][-1] == pytest.approx(via_hf["group"]["all"]["rel_change"], rel=1e-6)
    ids = torch.tensor([[1, 5, 9, 44, 3]])
    for a, b in zip(load_model(dcp10).hidden_states(ids), models.from_pretrained(ckpts["mt"]).hidden_states(ids)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
