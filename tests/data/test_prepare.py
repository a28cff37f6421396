"""prepare: input formats, the paper's formatting, shard format, fingerprints, multi-process identity, bad input,
crash safety. Real SmolLM2 tokenizer (from the bundled GGUF)."""
import gzip
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prism_fast.data import BadInputError, Mixture, Source, open_shard, prepare, tokenizer_info
from prism_fast.data.readers import format_record
from tests.data.conftest import make_shard

DOCS = ["The tide comes in twice a day.", "Bridges carry loads by tension or compression.\nSecond line.",
        "caf\u00e9 \u00fcber na\u00efve \u6f22\u5b57 emoji \U0001f600", "x = 3 * (4 + 5)"]


def _jsonl(path, recs, opener=open):
    with opener(path, "wt", encoding="utf-8") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")
    return str(path)


def _docs(shard):
    return [np.asarray(shard.tokens[shard.offsets[i]:shard.offsets[i + 1]]) for i in range(shard.num_docs)]


def test_jsonl_parquet_text_gz_give_same_tokens(tmp_path, smol_dir, smol_tok):
    a = _jsonl(tmp_path / "a.jsonl", [{"text": t} for t in DOCS])
    g = _jsonl(tmp_path / "g.jsonl.gz", [{"text": t} for t in DOCS], opener=gzip.open)
    p = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": DOCS, "other": list(range(len(DOCS)))}), p, row_group_size=2)
    t = tmp_path / "a.txt"
    t.write_text("\n\f\n".join(DOCS).replace("\n\f\n", "\n\f\n"), encoding="utf-8")
    eos = smol_tok.eos_token_id
    expect = [np.array(smol_tok(d, add_special_tokens=False).input_ids + [eos]) for d in DOCS]
    for name, src in (("j", a), ("g", g), ("p", str(p))):
        meta = prepare([src], smol_dir, str(tmp_path / name))
        sh = open_shard(tmp_path / name)
        assert meta["num_docs"] == 4 and sh.tokens.dtype == np.uint16  # 49152-token vocab fits uint16
        for got, exp in zip(_docs(sh), expect):
            np.testing.assert_array_equal(got, exp)
        assert meta["num_tokens"] == sum(map(len, expect))
        assert meta["sources"][0]["sha256"] and meta["tokenizer"]["eos_token_id"] == eos
    # plain text: a line holding only a form feed separates documents (the newline before it stays in the doc)
    prepare([str(t)], smol_dir, str(tmp_path / "t"))
    got = [smol_tok.decode(d[:-1]) for d in _docs(open_shard(tmp_path / "t"))]
    assert got == [d + "\n" for d in DOCS[:-1]] + [DOCS[-1]]


def test_chat_and_qa_formatting_and_mask(tmp_path, smol_dir, smol_tok):
    chat = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                         {"role": "assistant", "content": "4."}, {"role": "user", "content": "And 3+3?"},
                         {"role": "assistant", "content": "6."}]}
    doc = format_record(chat, "chat", "x", 1)
    assert doc.text == "System: Be brief.\nUser: 2+2?\nAssistant: 4.\nUser: And 3+3?\nAssistant: 6."
    assert [doc.text[s:e] for s, e in doc.response_spans] == [" 4.", " 6."]
    qa = {"problem": "What is 7 * 6?", "solution": "7 * 6 = 42.\nFinal answer: 42"}
    doc2 = format_record(qa, "qa", "x", 1)
    assert doc2.text == "What is 7 * 6?\n7 * 6 = 42.\nFinal answer: 42"  # joined by a single newline
    sharegpt = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    assert format_record(sharegpt, "chat", "x", 1).text == "User: hi\nAssistant: hello"

    prepare([_jsonl(tmp_path / "c.jsonl", [chat])], smol_dir, str(tmp_path / "c"), fmt="chat")
    sh = open_shard(tmp_path / "c")
    ids, mask = np.asarray(sh.tokens), np.asarray(sh.mask)
    assert ids[-1] == smol_tok.eos_token_id and mask[-1] == 1
    trained = smol_tok.decode(ids[mask == 1][:-1])
    assert trained.replace(" ", "") == "4.6.", trained  # only the assistant answers (and EOS) carry loss
    assert smol_tok.decode(ids[:-1]) == doc.text


def test_uint32_when_vocab_exceeds_uint16(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {f"w{i}": i for i in range(70_000)}
    vocab["<eos>"] = 70_000
    vocab["<unk>"] = 70_001
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", unk_token="<unk>").save_pretrained(tmp_path / "tk")
    src = _jsonl(tmp_path / "a.jsonl", [{"text": "w1 w69999 w65536"}, {"text": "w2"}])
    meta = prepare([src], str(tmp_path / "tk"), str(tmp_path / "s"))
    sh = open_shard(tmp_path / "s")
    assert meta["dtype"] == "uint32" and sh.tokens.dtype == np.uint32
    np.testing.assert_array_equal(np.asarray(sh.tokens), [1, 69999, 65536, 70000, 2, 70000])
    assert os.path.getsize(tmp_path / "s" / "tokens.bin") == 6 * 4


def test_fingerprint_gguf_equals_dir_and_mismatch_rejected(tmp_path, gguf_path, smol_dir):
    from prism_fast.data.prepare_shards import load_tokenizer
    fresh = load_tokenizer(gguf_path, cache=False)  # converted from the GGUF file now, not from the cache
    fp = tokenizer_info(fresh)
    assert fp["fingerprint"] == tokenizer_info(smol_dir)["fingerprint"] and fp["vocab_size"] == 49152
    assert tokenizer_info(gguf_path)["fingerprint"] == fp["fingerprint"]  # through the conversion cache
    assert fp["name"] == gguf_path
    src = _jsonl(tmp_path / "a.jsonl", [{"text": t} for t in DOCS])
    prepare([src], gguf_path, str(tmp_path / "real"))
    assert open_shard(tmp_path / "real").fingerprint == fp["fingerprint"]
    make_shard(tmp_path / "other", [5, 6], fingerprint="f" * 64)
    with pytest.raises(ValueError, match="another tokenizer"):
        Mixture([Source(tmp_path / "other", 1.0)], expected_fingerprint=fp["fingerprint"])
    with pytest.raises(ValueError, match="different tokenizers"):
        Mixture([Source(tmp_path / "other", 1.0), Source(tmp_path / "real", 1.0)])


def test_two_workers_write_identical_shard(tmp_path, smol_dir):
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "x", "=", "42", "\n", "Assistant", "the", "of", "\u00e9t\u00e9"]
    recs = [{"question": " ".join(rng.choice(words, 20)), "answer": " ".join(rng.choice(words, int(n)))}
            for n in rng.integers(1, 200, size=700)]  # several 256-doc batches
    src = _jsonl(tmp_path / "q.jsonl", recs)
    m1 = prepare([src], smol_dir, str(tmp_path / "w1"), fmt="qa", workers=1)
    m2 = prepare([src], smol_dir, str(tmp_path / "w2"), fmt="qa", workers=2)
    for f in ("tokens.bin", "tokens.idx", "tokens.mask"):
        assert (tmp_path / "w1" / f).read_bytes() == (tmp_path / "w2" / f).read_bytes(), f
    assert m1["num_tokens"] == m2["num_tokens"] and m1["num_docs"] == 700


@pytest.mark.parametrize("line,reason,match", [
    (b'{"text": "ok"', "bad_json", "malformed JSON"),
    (b'{"txt": "wrong field"}', "missing_field", "missing field"),
    (b'{"text": "bad \xff\xfe bytes"}', "not_utf8", "not valid UTF-8"),
    (b'{"text": "   "}', "empty", "empty document"),
    (b'["not", "an", "object"]', "not_object", "JSON object"),
])
def test_bad_jsonl_record_names_file_and_line(tmp_path, smol_dir, line, reason, match):
    src = tmp_path / "bad.jsonl"
    src.write_bytes(b'{"text": "one"}\n{"text": "two"}\n' + line + b'\n{"text": "four"}\n')
    with pytest.raises(BadInputError, match=match) as ei:
        prepare([str(src)], smol_dir, str(tmp_path / "out"))
    assert f"{src}:3:" in str(ei.value)
    assert not (tmp_path / "out" / "meta.json").exists() and not list((tmp_path / "out").glob("*.partial"))
    meta = prepare([str(src)], smol_dir, str(tmp_path / "out"), skip_bad=True)
    assert meta["skipped_bad"] == {reason: 1} and meta["num_docs"] == 3


def test_bad_record_in_worker_process(tmp_path, smol_dir):
    """Parsing runs in the tokenizer workers: their errors reach the parent intact, skip counts are summed."""
    lines = [json.dumps({"text": f"doc {i}"}) for i in range(600)]
    lines[450] = '{"text": '
    lines[520] = '{"nope": 1}'
    src = tmp_path / "w.jsonl"
    src.write_text("\n".join(lines) + "\n")
    with pytest.raises(BadInputError, match=rf"{src}:451: malformed JSON") as ei:
        prepare([str(src)], smol_dir, str(tmp_path / "o"), workers=2)
    assert ei.value.reason == "bad_json" and ei.value.line == 451
    meta = prepare([str(src)], smol_dir, str(tmp_path / "o"), workers=2, skip_bad=True)
    assert meta["skipped_bad"] == {"bad_json": 1, "missing_field": 1} and meta["num_docs"] == 598


def test_bad_parquet_row_and_cli_exit_code(tmp_path, smol_dir, capsys):
    p = tmp_path / "b.parquet"
    pq.write_table(pa.table({"question": ["q1", "q2", None], "answer": ["a1", "a2", "a3"]}), p)
    with pytest.raises(BadInputError, match=rf"{p}:3: missing field"):
        prepare([str(p)], smol_dir, str(tmp_path / "o"), fmt="qa")
    b = tmp_path / "bin.parquet"
    pq.write_table(pa.table({"text": pa.array([b"fine", b"\xc3\x28"], type=pa.binary())}), b)
    with pytest.raises(BadInputError, match=rf"{b}:2: not valid UTF-8"):
        prepare([str(b)], smol_dir, str(tmp_path / "o"))
    from prism_fast.data.__main__ import main
    rc = main(["prepare", "--input", str(b), "--tokenizer", smol_dir, "--out", str(tmp_path / "o")])
    assert rc == 2 and f"{b}:2" in capsys.readouterr().err
    assert main(["prepare", "--input", str(b), "--tokenizer", smol_dir, "--out", str(tmp_path / "o"),
                 "--skip-bad"]) == 0
    assert main(["inspect", str(tmp_path / "o")]) == 0 and '"not_utf8": 1' in capsys.readouterr().out


def test_crash_leaves_no_complete_looking_shard(tmp_path, smol_dir):
    good = [{"text": f"document number {i} " * 5} for i in range(600)]
    src = _jsonl(tmp_path / "a.jsonl", good)
    prepare([src], smol_dir, str(tmp_path / "out"))  # an old, complete shard
    old_meta = open_shard(tmp_path / "out").meta
    # 1) an error after some batches were written: the staged files are removed, the old shard is untouched
    bad = tmp_path / "b.jsonl"
    bad.write_text(open(src).read() + "{broken\n")
    with pytest.raises(BadInputError):
        prepare([str(bad)], smol_dir, str(tmp_path / "out"))
    assert open_shard(tmp_path / "out").meta == old_meta
    assert not list(tmp_path.glob(".out.*"))
    # 2) SIGKILL mid-run: the shard was being staged beside --out, so --out never appears (a stale hidden
    # staging directory stays behind, holding only partial files that open_shard refuses)
    big = _jsonl(tmp_path / "big.jsonl", good * 40)
    proc = subprocess.Popen([sys.executable, "-m", "prism_fast.data", "prepare", "--input", big, "--tokenizer",
                             smol_dir, "--out", str(tmp_path / "k")], stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not list(tmp_path.glob(".k.*.partial/tokens.bin.partial")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "k").exists()
    (stage,) = tmp_path.glob(".k.*.partial")
    with pytest.raises(ValueError, match="partial files"):
        open_shard(stage)


def test_truncated_or_corrupt_files_are_rejected(tmp_path):
    make_shard(tmp_path / "s", [5, 7, 9])
    open_shard(tmp_path / "s")
    b = tmp_path / "s" / "tokens.bin"
    data = b.read_bytes()
    b.write_bytes(data[:-2])
    with pytest.raises(ValueError, match=r"tokens\.bin: size 40 bytes, expected 42.*truncated"):
        open_shard(tmp_path / "s")
    b.write_bytes(data)
    i = tmp_path / "s" / "tokens.idx"
    idx = bytearray(i.read_bytes())
    idx[16:24] = (100).to_bytes(8, "little")  # offsets no longer rise
    i.write_bytes(bytes(idx))
    with pytest.raises(ValueError, match="offsets are corrupt"):
        open_shard(tmp_path / "s")


_RSS_CHILD = """
import json, sys
from prism_fast.data.prepare_shards import load_tokenizer, prepare
tok_dir, out = sys.argv[1], {}
load_tokenizer(tok_dir)

def hwm_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

for name, src in zip(("warmup", "small", "big"), sys.argv[2:]):
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak-RSS counter (Linux >= 4.0)
    base = hwm_mb()
    meta = prepare([src], tok_dir, src + ".out", progress=False)
    out[name] = (hwm_mb() - base, meta["num_tokens"])
print(json.dumps(out))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc peak-RSS reset")
def test_streaming_memory_is_constant(tmp_path, smol_dir):
    """Peak RSS growth of `prepare` (measured in a child from after the tokenizer load) does not depend on the
    input size: 0.3 MB vs 3 MB of JSONL (~750k tokens) differ by < 3 MB (after a warm-up run), while holding the
    input, its ids or its encodings in memory would cost about 3 / 1.5 / > 50 MB more."""
    rng = np.random.default_rng(0)
    words = np.array(["tide", "bridge", "bread", "yeast", "river", "map", "the", "of", "and", "=", "7"])

    def make(path, mb):
        with open(path, "w") as f:
            n = 0
            while n < mb * 2**20:
                line = json.dumps({"text": " ".join(rng.choice(words, 300))}) + "\n"
                f.write(line)
                n += len(line)
        return str(path)

    small, big = make(tmp_path / "s.jsonl", 0.3), make(tmp_path / "b.jsonl", 3)
    r = subprocess.run([sys.executable, "-c", _RSS_CHILD, smol_dir, small, small, big], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    print("peak RSS growth (MB, tokens):", res)
    assert res["big"][1] > 700_000
    assert res["big"][0] - res["small"][0] < 3 and res["big"][0] < 16, res
