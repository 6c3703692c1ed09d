"""The README's commands run as written: every command of its bash blocks that needs no GPU or
network is executed, in order, in one scratch folder on the demo data, with small budgets added
(SMALL) so that CPU runs take seconds; the others are skipped by name (SKIP), with the reason."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard

README = Path(__file__).resolve().parents[1] / "README.md"

SKIP = {  # command prefix -> why it does not run here
    "python3 -m venv": "creates a virtual environment",
    ". .venv/bin/activate": "activates that environment",
    "pip install": "installs from the network",
    "python -m pytest": "the test suite itself",
    "torchrun": "8 GPU ranks, and `--set ...` is a placeholder",
}
# extra arguments that keep a CPU run short; the README's own arguments stay as written
SMALL = {
    "loopgolf demo": ["--budget-s", "3", "--out-dir", "runs", "--cache-dir", "cache"],
    "loopgolf data tokenize": ["--workers", "2"],
    "loopgolf train": ["--set", "train.device=cpu", "--set", "train.compile=false",
                       "--set", "train.max_steps=1", "--set", "train.batch_tokens=1024",
                       "--set", "train.micro_batch_seqs=1", "--set", "eval.max_tokens=2048"],
}


def readme_commands() -> list[str]:
    """Each command of the README's ```bash blocks: continuation lines joined, comments dropped,
    `a && b` split."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            commands += [c.strip() for c in line.split("&&") if c.strip()]
    return commands


def _skip_reason(command: str) -> str | None:
    return next((why for prefix, why in SKIP.items() if command.startswith(prefix)), None)


def test_every_command_is_run_or_skipped_by_name():
    commands = readme_commands()
    assert len(commands) >= 10
    ran = [c for c in commands if _skip_reason(c) is None]
    assert all(c.startswith(("loopgolf ", "cat ")) for c in ran), ran


@pytest.mark.slow
def test_readme_commands_run_on_the_demo_data(tmp_path):
    from loopgolf.data.corpus import demo_documents

    docs, _ = demo_documents()
    (tmp_path / "docs").mkdir()
    payload = "".join(json.dumps({"text": d}) + "\n" for d in docs).encode()
    (tmp_path / "docs" / "demo.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(payload))
    outputs = {}
    for command in readme_commands():
        if _skip_reason(command):
            continue
        if command.startswith("loopgolf data tokenize") or command.startswith("loopgolf train"):
            # the README's tokenizer name, here the demo's tokenizer (vocab 1024 like the challenge's)
            tok = tmp_path / "fineweb_1024_bpe.model"
            if not tok.exists():
                tok.write_bytes((tmp_path / "cache" / "tokenizer_1024.model").read_bytes())
        argv = shlex.split(command)
        if argv[0] == "loopgolf":
            prefix = next((k for k in SMALL if command.startswith(k)), None)
            argv = [sys.executable, "-m", "loopgolf", *argv[1:], *(SMALL[prefix] if prefix else [])]
            argv = [str(p) for g in argv for p in (sorted(tmp_path.glob(g)) if g.startswith("docs/") else [g])]
        proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{command}\n{proc.stderr[-3000:]}"
        outputs[command.split(" --")[0]] = proc.stdout
    assert "reloaded artifact val_bpb" in outputs["loopgolf demo"]
    assert "17,059,912 parameters" in outputs["loopgolf params"]  # the count the README's comment gives
    result = json.loads(outputs["cat runs/baseline/result.json"])
    assert result["steps"] == 1 and result["val_bpb"] > 0
    assert "val_bpb:" in outputs["loopgolf eval runs/baseline/model.lgz"]
