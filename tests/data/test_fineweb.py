"""The FineWeb downloader against local stand-ins for the hub: a folder repo and a 127.0.0.1 server."""
from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from loopgolf.data import fineweb
from loopgolf.data.fineweb import (DownloadError, HttpSource, HubSource, LocalFolderSource,
                                   download_fineweb, make_source, plan_files)
from loopgolf.data.shards import load_shard, write_shard

VARIANT_DIR = "datasets/datasets/fineweb10B_sp1024"


def _make_repo(root: Path, tokenizer: Path, n_train: int = 3) -> dict[str, bytes]:
    """A folder laid out like the challenge repo; returns {repo path: bytes}."""
    rng = np.random.default_rng(0)
    for split, n in (("val", 1), ("train", n_train)):
        for i in range(n):
            write_shard(root / VARIANT_DIR / f"fineweb_{split}_{i:06d}.bin",
                        rng.integers(0, 1024, size=5000 + 100 * i))
    tok_dir = root / "datasets/tokenizers"
    tok_dir.mkdir(parents=True)
    (tok_dir / "fineweb_1024_bpe.model").write_bytes(tokenizer.read_bytes())
    (tok_dir / "fineweb_1024_bpe.vocab").write_text("<unk>\t0\n")
    manifest = {"datasets": [{"name": "fineweb10B_sp1024", "tokenizer_name": "sp_bpe_1024",
                              "stats": {"files_train": n_train, "files_val": 1}}],
                "tokenizers": [{"name": "sp_bpe_1024", "model_path": "tokenizers/fineweb_1024_bpe.model",
                                "vocab_path": "tokenizers/fineweb_1024_bpe.vocab"}]}
    (root / "datasets/manifest.json").write_text(json.dumps(manifest))
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def repo(tmp_path, tiny_sp_model):
    root = tmp_path / "repo"
    return root, _make_repo(root, tiny_sp_model)


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves the repo folder with Range support; cuts each path in `cut` once, halfway."""

    root: Path
    ranges: list
    cut: set

    def log_message(self, *args):
        pass

    def _target(self) -> Path | None:
        p = self.root / self.path.lstrip("/")
        return p if p.is_file() else None

    def do_HEAD(self):
        p = self._target()
        if p is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(p.stat().st_size))
        self.end_headers()

    def do_GET(self):
        p = self._target()
        if p is None:
            self.send_error(404)
            return
        data = p.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        self.ranges.append((self.path, rng))
        if rng:
            start = int(rng.split("=")[1].rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if self.path in self.cut:
            self.cut.discard(self.path)
            self.wfile.write(data[start:start + (len(data) - start) // 2])
            return  # the connection closes: the client sees a short read
        self.wfile.write(data[start:])


@pytest.fixture
def server(repo):
    root, _ = repo
    handler = type("H", (_Handler,), {"root": root, "ranges": [], "cut": set()})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def _check_layout(out: Path, files: dict[str, bytes], n_train: int) -> None:
    for split, n in (("val", 1), ("train", n_train)):
        for i in range(n):
            name = f"{VARIANT_DIR}/fineweb_{split}_{i:06d}.bin"
            local = out / name.removeprefix("datasets/")
            assert local.read_bytes() == files[name]
    model = "tokenizers/fineweb_1024_bpe.model"
    assert (out / model).read_bytes() == files[f"datasets/{model}"]
    assert not list(out.rglob("*.part"))


def test_local_folder_download_layout_record_and_skip(repo, tmp_path):
    root, files = repo
    out = tmp_path / "data"
    res = download_fineweb("sp1024", 2, out, LocalFolderSource(root), progress=False)
    _check_layout(out, files, 2)
    assert not (out / "datasets/fineweb10B_sp1024/fineweb_train_000002.bin").exists()
    assert len(res["downloaded"]) == 5 and res["tokenizer"].endswith("fineweb_1024_bpe.model")
    rec = json.loads((out / "downloads.json").read_text())
    entry = rec["files"]["datasets/fineweb10B_sp1024/fineweb_val_000000.bin"]
    assert entry["checked"] == "size+header"
    assert entry["sha256"] == hashlib.sha256(files[f"{VARIANT_DIR}/fineweb_val_000000.bin"]).hexdigest()
    again = download_fineweb("sp1024", 3, out, LocalFolderSource(root), progress=False)
    assert again["downloaded"] == ["datasets/fineweb10B_sp1024/fineweb_train_000002.bin"]
    assert len(again["skipped"]) == 5


def test_http_resume_after_interrupted_file(repo, server, tmp_path):
    root, files = repo
    url, handler = server
    target = f"/{VARIANT_DIR}/fineweb_train_000001.bin"
    handler.cut.add(target)
    out = tmp_path / "data"
    with pytest.raises(DownloadError, match="interrupted.*resume"):
        download_fineweb("sp1024", 3, out, HttpSource(url), progress=False)
    part = out / "datasets/fineweb10B_sp1024/fineweb_train_000001.bin.part"
    half = len(files[target.lstrip("/")]) // 2
    assert part.stat().st_size == half
    assert not part.with_suffix("").exists()
    download_fineweb("sp1024", 3, out, HttpSource(url), progress=False)
    assert (target, f"bytes={half}-") in handler.ranges  # resumed, not restarted
    _check_layout(out, files, 3)
    assert load_shard(part.with_suffix("")).size == 5100


def test_wrong_checksum_is_refused_and_removed(repo, tmp_path):
    root, files = repo
    manifest = json.loads((root / "datasets/manifest.json").read_text())
    val = "datasets/fineweb10B_sp1024/fineweb_val_000000.bin"
    manifest["files"] = {val: {"sha256": "0" * 64}}
    (root / "datasets/manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "data"
    with pytest.raises(DownloadError, match="fineweb_val_000000.bin: SHA-256 .* source says 0000"):
        download_fineweb("sp1024", 1, out, LocalFolderSource(root), progress=False)
    assert not (out / val).exists() and not list(out.rglob("*.part"))
    good = hashlib.sha256(files[f"{VARIANT_DIR}/fineweb_val_000000.bin"]).hexdigest()
    manifest["files"] = {val: {"sha256": good}}
    (root / "datasets/manifest.json").write_text(json.dumps(manifest))
    download_fineweb("sp1024", 1, out, LocalFolderSource(root), progress=False)
    assert json.loads((out / "downloads.json").read_text())["files"][val]["checked"] == "sha256"


def test_truncated_or_corrupt_shard_without_checksum_is_refused(repo, tmp_path):
    root, _ = repo
    shard = root / VARIANT_DIR / "fineweb_val_000000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])  # header now disagrees with the size
    with pytest.raises(DownloadError, match="not a valid shard"):
        download_fineweb("sp1024", 0, tmp_path / "data", LocalFolderSource(root), progress=False)


def test_offline_is_one_clear_error(tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match="cannot reach http://127.0.0.1.*offline") as e:
        download_fineweb("sp1024", 1, tmp_path / "data", HttpSource(f"http://127.0.0.1:{port}", timeout=5),
                         progress=False)
    assert "\n" not in str(e.value)


def test_plan_files_and_variant_hints(repo):
    root, _ = repo
    manifest = json.loads((root / "datasets/manifest.json").read_text())
    plan = plan_files(manifest, "sp1024", 2)
    assert plan["train"] == ["datasets/fineweb10B_sp1024/fineweb_train_000000.bin",
                             "datasets/fineweb10B_sp1024/fineweb_train_000001.bin"]
    with pytest.raises(DownloadError, match="has 3 sp1024 train shards"):
        plan_files(manifest, "sp1024", 4)
    with pytest.raises(DownloadError, match="no dataset fineweb10B_sp8192.*kevclark/parameter-golf"):
        plan_files(manifest, "sp8192", 1)
    assert fineweb.default_repo("sp8192") == "kevclark/parameter-golf"
    assert fineweb.default_repo("sp1024") == "willdepueoai/parameter-golf"


def test_hub_source_without_huggingface_hub(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails as if not installed
    src = make_source(None, "willdepueoai/parameter-golf")
    assert isinstance(src, HubSource)
    with pytest.raises(DownloadError, match=r"pip install 'loopgolf\[fineweb\]'"):
        download_fineweb("sp1024", 1, tmp_path, src, progress=False)
