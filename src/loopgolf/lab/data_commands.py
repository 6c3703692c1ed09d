"""`loopgolf data ...`: tokenizers, shards, the challenge's FineWeb download, shard info, self-tests.

register(sub) adds the whole `data` command group to the CLI's subparsers. Failures the user can
fix (no network, a bad checksum, a malformed corpus file, a tokenizer that fails its self-test)
print one `loopgolf: error: ...` line and exit 2, like the rest of the CLI.
"""
from __future__ import annotations

import argparse
import functools
import itertools
import json
import sys
from collections.abc import Callable
from pathlib import Path

from loopgolf.data.corpus import CorpusError
from loopgolf.data.fineweb import DownloadError
from loopgolf.data.shards import ShardError
from loopgolf.data.tokenizer import TokenizerError

DEMO_CACHE = Path.home() / ".cache" / "loopgolf" / "demo"
_ERRORS = (DownloadError, CorpusError, TokenizerError, ShardError)


def _fails_cleanly(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    @functools.wraps(fn)
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except _ERRORS as e:
            print(f"loopgolf: error: {e}", file=sys.stderr, flush=True)
            return 2
    return run


def _documents(inputs: list[str], text_key: str, transform: str | None):
    from loopgolf.data.corpus import iter_documents
    from loopgolf.data.transform import get_transform

    docs = itertools.chain.from_iterable(iter_documents(Path(p), text_key) for p in inputs)
    if transform is None:
        return docs
    tf = get_transform(transform)
    return (tf.encode(d) for d in docs)


@_fails_cleanly
def cmd_tokenizer(args: argparse.Namespace) -> int:
    from loopgolf.data.tokenizer import selftest_tokenizer, train_tokenizer
    from loopgolf.data.transform import get_transform

    reserved = get_transform(args.transform).reserved if args.transform else ()
    docs = _documents(args.input, args.text_key, args.transform)
    path = train_tokenizer(docs, args.vocab_size, args.out, max_docs=args.max_docs,
                           user_defined_symbols=reserved)
    report = selftest_tokenizer(path)
    if not report["ok"]:
        raise TokenizerError(f"{path}: written but fails its self-test: {'; '.join(report['problems'])}")
    print(f"tokenizer written: {path} (self-test passed on {report['texts']} texts)")
    return 0


@_fails_cleanly
def cmd_tokenize(args: argparse.Namespace) -> int:
    from loopgolf.data.prepare import prepare_corpus

    manifest = prepare_corpus([Path(p) for p in args.input], Path(args.tokenizer), Path(args.out),
                              val_fraction=args.val_fraction, seed=args.seed,
                              shard_tokens=args.shard_tokens, workers=args.workers,
                              text_key=args.text_key, transform=args.transform)
    print(json.dumps(manifest, indent=2, default=str))
    return 0


@_fails_cleanly
def cmd_demo(args: argparse.Namespace) -> int:
    from loopgolf.data.demo_cache import prepare_demo

    print(json.dumps(prepare_demo(Path(args.cache_dir), progress=True), indent=2, default=str))
    return 0


@_fails_cleanly
def cmd_fineweb(args: argparse.Namespace) -> int:
    from loopgolf.data.fineweb import default_repo, download_fineweb, make_source

    repo = args.repo_id or default_repo(args.variant)
    source = make_source(args.source, repo, args.revision)
    res = download_fineweb(args.variant, args.train_shards, Path(args.out), source,
                           progress=not args.no_progress)
    print(f"fineweb {args.variant} from {res['source']}: {len(res['downloaded'])} downloaded, "
          f"{len(res['skipped'])} already complete")
    print(f"  --set data.train='{res['train']}' --set data.val='{res['val']}' "
          f"--set data.tokenizer={res['tokenizer']}")
    return 0


@_fails_cleanly
def cmd_info(args: argparse.Namespace) -> int:
    from loopgolf.data.atomic import atomic_write_text
    from loopgolf.data.info import completion_record, find_shards, format_info, shard_info

    groups = find_shards(args.path)
    folder = Path(args.path) if Path(args.path).is_dir() else next(iter(groups.values()))[0].parent
    if not args.no_manifest and completion_record(folder) is None:
        raise ShardError(
            f"{folder}: {sum(map(len, groups.values()))} shards but no manifest.json, so the "
            "folder is unfinished (an interrupted `loopgolf data tokenize`?); rerun it, or pass "
            "--no-manifest for shards made elsewhere")
    info = shard_info(args.path, args.tokenizer)
    print(format_info(info))
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(info, indent=2) + "\n")
    return 0 if info["ok"] else 1


@_fails_cleanly
def cmd_selftest(args: argparse.Namespace) -> int:
    from loopgolf.data.tokenizer import SELFTEST_TEXTS, selftest_tokenizer
    from loopgolf.data.transform import check_roundtrip, get_transform

    texts = list(itertools.islice(_documents(args.input, args.text_key, None), args.max_docs)) if args.input else []
    problems = []
    if args.transform:
        problems = check_roundtrip(get_transform(args.transform), [*SELFTEST_TEXTS, *texts])
        texts = [get_transform(args.transform).encode(t) for t in texts]
    report = selftest_tokenizer(args.tokenizer, texts)
    problems = report["problems"] + problems
    for p in problems:
        print(f"FAIL {p}")
    print(f"{args.tokenizer}: {'FAILED' if problems else 'passed'} ({report['texts']} texts, "
          f"vocab {report['vocab_size']})")
    return 1 if problems else 0


def register(sub) -> None:
    """Add `data` and its subcommands to the CLI's top-level subparsers object."""
    from loopgolf.data.fineweb import DEFAULT_REPO, VARIANT_REPOS
    from loopgolf.data.transform import TRANSFORMS

    data = sub.add_parser("data", help="tokenizers, shards, the challenge's FineWeb download, checks")
    data = data.add_subparsers(dest="data_command", required=True)
    docs_help = ".txt/.jsonl/.jsonl.zst/.parquet files or folders"

    p = data.add_parser("tokenizer", help="train a SentencePiece BPE with the challenge's settings, then self-test it")
    p.add_argument("--input", nargs="+", required=True, help=docs_help)
    p.add_argument("--vocab-size", type=int, default=1024)
    p.add_argument("--out", required=True, help="output prefix (writes PREFIX.model and PREFIX.vocab)")
    p.add_argument("--max-docs", type=int, default=None)
    p.add_argument("--text-key", default="text", help="JSON field / parquet column with the text")
    p.add_argument("--transform", choices=sorted(TRANSFORMS), help="train on transformed text")
    p.set_defaults(fn=cmd_tokenizer)

    p = data.add_parser("tokenize", help="documents -> train/val shards ([BOS]+pieces per document)")
    p.add_argument("--input", nargs="+", required=True, help=docs_help)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--val-fraction", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-tokens", type=int, default=10**8)
    p.add_argument("--workers", type=int, default=0, help="0 = all cores")
    p.add_argument("--text-key", default="text", help="JSON field / parquet column with the text")
    p.add_argument("--transform", choices=sorted(TRANSFORMS),
                   help="lossless text transform; writes a per-token byte sidecar in OUT/bytes/")
    p.set_defaults(fn=cmd_tokenize)

    p = data.add_parser("demo", help="build the demo corpus shards and tokenizer (cached)")
    p.add_argument("--cache-dir", default=str(DEMO_CACHE))
    p.set_defaults(fn=cmd_demo)

    p = data.add_parser("fineweb", help="download the challenge's tokenized FineWeb shards (resumable, verified)")
    p.add_argument("--variant", default="sp1024", help="sp1024 (default), sp4096, sp8192, ...")
    p.add_argument("--train-shards", type=int, default=80, help="first N train shards of 100M tokens (default 80)")
    p.add_argument("--repo-id", help=f"HF dataset repo (default {DEFAULT_REPO}; "
                   f"{', '.join(sorted(VARIANT_REPOS))}: {sorted(set(VARIANT_REPOS.values()))[0]})")
    p.add_argument("--revision", help="branch, tag or commit of the repo")
    p.add_argument("--source", help="a local folder or http(s) mirror laid out like the repo, instead of the hub")
    p.add_argument("--out", default="data", help="writes OUT/datasets/fineweb10B_VARIANT and OUT/tokenizers")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(fn=cmd_fineweb)

    p = data.add_parser("info", help="tokens, documents, vocab, bytes/token and checks of a shard folder")
    p.add_argument("path", help="folder of shards or a quoted glob")
    p.add_argument("--tokenizer", help="SentencePiece .model (default: from manifest.json / the download layout)")
    p.add_argument("--json", help="also write the report here")
    p.add_argument("--no-manifest", action="store_true",
                   help="inspect shards that have no manifest.json (made by other tools)")
    p.set_defaults(fn=cmd_info)

    p = data.add_parser("selftest", help="check a tokenizer's byte accounting (issue #897) on built-in and your texts")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--input", nargs="*", default=[], help=docs_help)
    p.add_argument("--max-docs", type=int, default=1000)
    p.add_argument("--text-key", default="text")
    p.add_argument("--transform", choices=sorted(TRANSFORMS), help="the tokenizer reads transformed text")
    p.set_defaults(fn=cmd_selftest)
