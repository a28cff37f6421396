"""CLI: `python -m prism_fast.data prepare ...` (raw files -> shard) and `... inspect DIR...` (shard summary)."""
from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m prism_fast.data", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("prepare", help="tokenize JSONL / Parquet / text files into a token shard directory")
    pp.add_argument("--input", nargs="+", required=True, help="files or directories (recursed, sorted)")
    pp.add_argument("--tokenizer", required=True, help="HF tokenizer directory or a .gguf file")
    pp.add_argument("--out", required=True, help="output shard directory")
    pp.add_argument("--domain", default=None, help="domain label stored in meta.json (default: --out name)")
    pp.add_argument("--format", default="text", choices=("text", "chat", "qa"))
    pp.add_argument("--workers", type=int, default=1, help="tokenizer processes")
    pp.add_argument("--skip-bad", action="store_true", help="skip and count bad records instead of failing")
    pp.add_argument("--text-field", default=None, help="JSON field holding the text (format text)")
    pp.add_argument("--eos-token", default=None, help="token appended to each document (default: tokenizer EOS)")
    ip = sub.add_parser("inspect", help="validate shard directories and print their meta.json summary")
    ip.add_argument("dirs", nargs="+")
    args = p.parse_args(argv)

    from prism_fast.data.readers import BadInputError

    try:
        if args.cmd == "prepare":
            from prism_fast.data.prepare_shards import prepare

            meta = prepare(args.input, args.tokenizer, args.out, domain=args.domain, fmt=args.format,
                           workers=args.workers, skip_bad=args.skip_bad, text_field=args.text_field,
                           eos_token=args.eos_token)
            print(f"wrote {args.out}: {meta['num_docs']} documents, {meta['num_tokens']} tokens ({meta['dtype']})")
        else:
            from prism_fast.data.shards import open_shard

            for d in args.dirs:
                sh = open_shard(d)
                keep = {k: sh.meta[k] for k in ("domain", "format", "dtype", "num_docs", "num_tokens",
                                                "max_doc_len", "skipped_bad")}
                keep["tokenizer"] = sh.meta["tokenizer"]["name"], sh.fingerprint[:12]
                print(d, json.dumps(keep))
    except BadInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
