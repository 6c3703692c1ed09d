"""The `loopgolf fidelity` command: arguments, the PR profile, and which runs to make or reuse.

lab/fidelity.py owns the comparison (staging, running, parsing, the report); this module decides
what runs. A finished run can be reused instead of repeated, so a second script seed or a second
preset seed costs one run, not a whole comparison: `--script-log SEED=PATH` parses a script log of
an earlier call (the same profile and data, which the user vouches for; the report marks it reused),
`--preset-run DIR` parses an earlier preset run directory, and `--preset-seeds` runs the preset with
more than one seed to measure loopgolf's own seed-to-seed spread next to the script's.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from loopgolf.lab.fidelity import (
    PRESET_OF_PR,
    SDPA_STANDIN,
    RunLog,
    fidelity_report,
    format_report,
    parse_run_dir,
    parse_script_log,
    plot_report,
    preset_command,
    run_preset,
    run_script,
    script_env,
    stage_challenge_data,
)


def resolve_pr(args) -> dict | None:
    """--pr N: fill the preset, sequence length, batch and stand-in from PR N's profile
    (lab/script_profiles.py) where not given, and return the profile's script environment and
    preset --sets; without --pr, the challenge defaults (1024 tokens per row, 524,288 per step)."""
    prof = None
    if args.pr:
        from loopgolf.lab.script_profiles import profile_for

        prof = profile_for(args.pr, args.preset)
        args.preset = prof.preset
        args.sdpa_standin = args.sdpa_standin or prof.standin
    elif not args.preset:
        raise SystemExit("loopgolf fidelity: --preset is required without --pr")
    args.seq_len = args.seq_len or (prof.seq_len if prof else 1024)
    args.batch_tokens = args.batch_tokens or (prof.batch_tokens if prof else 524_288)
    if prof is None:
        return None
    return {"pr": prof.pr, "preset": prof.preset, "env": prof.env(args.steps, args.set),
            "preset_sets": list(prof.preset_sets), "why": dict(prof.why), "records": prof.records,
            "published_sha256": prof.sha256}


def check_script(path: Path, profile: dict | None, modified_ok: bool) -> dict:
    """The script's identity for the report; with --pr, refuse a file that is not that PR's published
    train_gpt.py (an earlier session ran PR #21's root train_gpt.py, a plain baseline, as if it were
    the record) unless --modified-script says the edits are deliberate."""
    if not path.is_file():
        raise SystemExit(f"loopgolf fidelity: --script {path} is not a file")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    published = None if profile is None else digest == profile["published_sha256"]
    if published is False and not modified_ok:
        pr, records = profile["pr"], profile["records"]
        raise SystemExit(
            f"loopgolf fidelity: --script {path} is not PR #{pr}'s published {records}/train_gpt.py "
            f"(sha256 {digest[:16]}…, expected {profile['published_sha256'][:16]}…). Get that file with "
            f"`git -C <your clone of openai/parameter-golf> show refs/pull/{pr}/head:{records}/train_gpt.py "
            f"> {path}`, or pass --modified-script to compare your edited copy on purpose")
    return {"path": str(path), "sha256": digest, "published": published}


def reused_script_logs(specs: list[str], dialect: str) -> dict[int, RunLog]:
    """--script-log SEED=PATH ...: the parsed earlier logs, by seed."""
    out = {}
    for spec in specs:
        seed, sep, path = spec.partition("=")
        if not sep or not seed.strip().lstrip("-").isdigit():
            raise SystemExit(f"loopgolf fidelity: --script-log {spec!r}: give SEED=PATH, e.g. 1337=old/script_seed1337.log")
        log = Path(path)
        if not log.is_file():
            raise SystemExit(f"loopgolf fidelity: --script-log {spec!r}: {log} is not a file")
        text = log.read_text(encoding="utf-8", errors="replace")
        if dialect == "pr29":
            from loopgolf.lab.script_dialects import parse_pr29_log

            run = parse_pr29_log(text)
        else:
            run = parse_script_log(text)
        if not run.train_loss:
            raise SystemExit(f"loopgolf fidelity: --script-log {spec!r}: {log} has no train_loss lines")
        run.command = f"reused log {log}"
        out[int(seed)] = run
    return out


def reused_preset_run(run_dir: str) -> RunLog:
    path = Path(run_dir)
    run = parse_run_dir(path)
    if not run.train_loss:
        raise SystemExit(f"loopgolf fidelity: --preset-run {path}: no train losses in {path / 'metrics.jsonl'} "
                         "(give the run directory of an earlier `loopgolf fidelity` preset run)")
    run.command = f"reused run directory {path}"
    return run


def _script_runs(args, data: Path, extra: dict[str, str], standin: Path | None, out: Path) -> list[RunLog]:
    reused = reused_script_logs(args.script_log, args.dialect)
    runs = []
    for seed in args.script_seeds:
        if seed in reused:
            runs.append(reused[seed])
        elif args.dialect == "pr29":  # its own data paths, seed, log and no step limit (script_dialects.py)
            from loopgolf.lab.script_dialects import run_pr29_script

            runs.append(run_pr29_script(Path(args.script), args.train, args.val, args.tokenizer, seed,
                                        args.steps, out / f"script_seed{seed}", out / f"script_seed{seed}.log",
                                        args.batch_tokens))
        else:
            env = script_env(data, args.tokenizer, seed, args.steps, args.batch_tokens, args.seq_len,
                             f"fidelity_seed{seed}", extra)
            runs.append(run_script(Path(args.script), env, out / f"script_seed{seed}",
                                   out / f"script_seed{seed}.log", args.nproc, standin))
    return runs


def as_run(profile: dict | None, env: dict, sets: list) -> dict | None:
    """The profile as the runs used it: its script environment with --script-env on top and its
    preset --sets followed by the user's, so the report names what ran, not the profile's defaults."""
    return None if profile is None else {**profile, "env": dict(env), "preset_sets": list(sets)}


def cmd_fidelity(args) -> int:
    out = Path(args.out)
    profile = resolve_pr(args)
    script_id = check_script(Path(args.script), profile, args.modified_script)
    unknown = set(dict(s.partition("=")[::2] for s in args.script_log)) - {str(s) for s in args.script_seeds}
    if unknown:
        raise SystemExit(f"loopgolf fidelity: --script-log for seed(s) {sorted(unknown)} not in --script-seeds")
    data = stage_challenge_data(args.train, args.val, out / "challenge_data", args.val_tokens)
    # with --val-tokens the preset scores the same truncated val file as the script
    val = str(data / "fineweb_val_000000.bin") if args.val_tokens else args.val
    standin = None
    if args.sdpa_standin:
        standin = out / "standin"
        standin.mkdir(parents=True, exist_ok=True)
        (standin / "flash_attn_interface.py").write_text(SDPA_STANDIN)
    extra = {**(profile["env"] if profile else {}), **dict(kv.split("=", 1) for kv in args.script_env)}
    script_runs = _script_runs(args, data, extra, standin, out)
    sets = [*(profile["preset_sets"] if profile else []), *args.set]
    preset_runs = []
    seeds = args.preset_seeds or args.script_seeds[:1]
    for i, seed in enumerate(seeds):
        if i == 0 and args.preset_run:
            preset_runs.append(reused_preset_run(args.preset_run))
            continue
        name = "preset_run" if i == 0 else f"preset_run_seed{seed}"
        cmd = preset_command(args.preset, args.train, val, args.tokenizer, seed, args.steps,
                             args.batch_tokens, args.seq_len, out / name, sets)
        preset_runs.append(run_preset(cmd, out / name, out / f"{name.replace('_run', '')}.log"))
    report = fidelity_report(script_runs, preset_runs[0], args.window, standin is not None, preset_runs[1:])
    report["script_profile"], report["val_tokens"] = as_run(profile, extra, sets), args.val_tokens
    report["script_file"] = script_id
    (out / "fidelity.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    if args.png:
        plot_report(report, Path(args.png))
    print(format_report(report), flush=True)
    failed = [r for r in (*script_runs, *preset_runs) if r.exit_code]
    return 2 if failed else 0


def register(sub) -> None:
    p = sub.add_parser("fidelity", help="a published train_gpt.py vs its preset: loss curves side by side")
    p.add_argument("--script", required=True, help="path of the published train_gpt.py (not stored here)")
    p.add_argument("--preset", default="", help=f"matching preset, e.g. {PRESET_OF_PR} (default with --pr: the PR's)")
    p.add_argument("--pr", type=int, default=0,
                   help="the script's PR (927, 21, 1453, 1290): its README env, step knobs scaled to --steps from "
                        "the preset's fractions, post-training shortcuts, the preset's matching --sets "
                        "(lab/script_profiles.py); --script-env and --set still win")
    p.add_argument("--modified-script", action="store_true",
                   help="with --pr: run a --script that differs from the PR's published file (your edits); "
                        "the report records its sha256")
    p.add_argument("--train", required=True, help="glob of training shards")
    p.add_argument("--val", required=True, help="glob of validation shards")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-tokens", type=int, default=0, help="default: the PR's, else 524,288")
    p.add_argument("--seq-len", type=int, default=0, help="default: the PR's, else 1024")
    p.add_argument("--val-tokens", type=int, default=0,
                   help="score only the first N val tokens, script and preset alike (0 = all of val)")
    p.add_argument("--script-seeds", type=int, nargs="+", default=[1337, 42],
                   help="seeds of the published script; the second measures the seed spread")
    p.add_argument("--script-log", action="append", default=[], metavar="SEED=PATH",
                   help="reuse an earlier call's log for that script seed instead of running it again")
    p.add_argument("--preset-seeds", type=int, nargs="+", default=[],
                   help="seeds of the preset (default: the first script seed); the second measures "
                        "loopgolf's own seed spread")
    p.add_argument("--preset-run", default="",
                   help="reuse an earlier preset run directory for the first preset seed")
    p.add_argument("--script-env", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra environment for the script (its own knobs)")
    p.add_argument("--set", action="append", default=[], help="extra --set for the preset")
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--window", type=int, default=50)
    p.add_argument("--sdpa-standin", action="store_true",
                   help="give the script an SDPA flash_attn_interface (logged in the report)")
    p.add_argument("--dialect", choices=("challenge", "pr29"), default="challenge",
                   help="challenge: the env-driven train_gpt.py; pr29: PR #29's script (lab/script_dialects.py)")
    p.add_argument("--png", default="")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_fidelity)
