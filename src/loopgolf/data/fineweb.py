"""Download the challenge's tokenized FineWeb shards, resumably and verified, from a manifest.

Remote layout (techniques.md 3.1), all under the prefix `datasets/` of a Hugging Face dataset repo:
`manifest.json`, `datasets/fineweb10B_<variant>/fineweb_{val,train}_NNNNNN.bin` and
`tokenizers/<name>.model|.vocab`; the manifest's `datasets[].stats.files_train/files_val` and
`tokenizers[].model_path/vocab_path` say which files exist. Locally the prefix is dropped:
OUT/manifest.json, OUT/datasets/fineweb10B_<variant>/, OUT/tokenizers/.

The manifest is fetched fresh every time, since a stale one lacks other repos' variants (challenge
issue #1015). Each file is fetched into NAME.part, which a re-run continues from where it stopped,
then checked before it takes its real name: against the size and SHA-256 that the manifest's
optional `files` table or the hub's metadata give, else by its size and shard header, and its
local SHA-256 is recorded in OUT/downloads.json so later runs skip it without re-hashing.
The transport is a Source: the hub (huggingface_hub, imported only when used), a local folder or
an HTTP mirror; tests use the last two with files they make.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tqdm import tqdm

from .atomic import atomic_write_text
from .shards import ShardError, read_header

DEFAULT_REPO = "willdepueoai/parameter-golf"
VARIANT_REPOS = {"sp4096": "kevclark/parameter-golf", "sp8192": "kevclark/parameter-golf"}  # 3.2
REMOTE_PREFIX = "datasets"
RECORD = "downloads.json"
_CHUNK = 1 << 20
_RERUN = "re-run the same command to resume"


class DownloadError(RuntimeError):
    """A download that cannot go on; the message names the file or host and the fix."""


@dataclass(frozen=True)
class RemoteFile:
    """What a source knows about one file: its size and SHA-256, either may be unknown."""

    path: str
    size: int | None = None
    sha256: str | None = None


class Source(Protocol):
    """A place to fetch repo files from; paths are repo-relative with "/" separators."""

    name: str

    def stat(self, path: str) -> RemoteFile: ...

    def fetch(self, path: str, part: Path, on_bytes: Callable[[int], None]) -> None:
        """Append the rest of the file to `part` (resuming from its current size)."""
        ...


def default_repo(variant: str) -> str:
    return VARIANT_REPOS.get(variant, DEFAULT_REPO)


class LocalFolderSource:
    """A folder laid out like the repo (a mirror, or a stand-in made by tests)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.name = str(self.root)

    def stat(self, path: str) -> RemoteFile:
        p = self.root / path
        if not p.is_file():
            raise DownloadError(f"{p}: not in the local source folder; check --source and the variant")
        return RemoteFile(path, p.stat().st_size)

    def fetch(self, path: str, part: Path, on_bytes: Callable[[int], None]) -> None:
        start = part.stat().st_size if part.exists() else 0
        with open(self.root / path, "rb") as src:
            src.seek(start)
            _append(src, part, start, on_bytes, path)


class HttpSource:
    """A plain HTTP(S) mirror: BASE_URL/<path>; resumes with Range requests when the server allows."""

    def __init__(self, base_url: str, timeout: float = 60.0):
        self.base = base_url.rstrip("/")
        self.name = self.base
        self.timeout = timeout

    def _url(self, path: str) -> str:
        return f"{self.base}/{urllib.request.quote(path)}"

    def stat(self, path: str) -> RemoteFile:
        try:
            with urllib.request.urlopen(urllib.request.Request(self._url(path), method="HEAD"),
                                        timeout=self.timeout) as r:
                length = r.headers.get("Content-Length")
        except urllib.error.HTTPError as e:
            raise DownloadError(f"{self._url(path)}: HTTP {e.code} {e.reason}; check the URL and variant") from None
        except OSError as e:
            raise _offline(self.base, e) from None
        return RemoteFile(path, int(length) if length is not None else None)

    def fetch(self, path: str, part: Path, on_bytes: Callable[[int], None]) -> None:
        start = part.stat().st_size if part.exists() else 0
        req = urllib.request.Request(self._url(path))
        if start:
            req.add_header("Range", f"bytes={start}-")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                if start and r.status != 206:  # the server ignored Range: start over
                    part.unlink()
                    start = 0
                _append(r, part, start, on_bytes, path)
        except urllib.error.HTTPError as e:
            if e.code == 416:  # our .part is not a prefix of the remote file
                part.unlink()
                raise DownloadError(f"{self._url(path)}: partial file did not match; {_RERUN}") from None
            raise DownloadError(f"{self._url(path)}: HTTP {e.code} {e.reason}") from None
        except urllib.error.URLError as e:
            raise _offline(self.base, e) from None


class HubSource:
    """A Hugging Face dataset repo through huggingface_hub (HF_TOKEN, HF_ENDPOINT, caching apply)."""

    def __init__(self, repo_id: str, revision: str | None = None, staging: Path | None = None):
        self.repo_id, self.revision = repo_id, revision
        self.name = f"hf://datasets/{repo_id}" + (f"@{revision}" if revision else "")
        self.staging = staging

    def _hub(self):
        try:
            import huggingface_hub
        except ImportError:
            raise DownloadError("huggingface_hub is not installed; pip install 'loopgolf[fineweb]' "
                                "(or pip install huggingface_hub), or pass --source") from None
        return huggingface_hub

    def stat(self, path: str) -> RemoteFile:
        return self.stat_many([path])[0]

    def stat_many(self, paths: list[str]) -> list[RemoteFile]:
        """One metadata call for many files; LFS files carry their SHA-256."""
        hub = self._hub()
        try:
            infos = hub.HfApi().get_paths_info(self.repo_id, paths, repo_type="dataset",
                                               revision=self.revision)
        except Exception as e:  # noqa: BLE001 - hub errors differ across versions; see _hub_error
            raise _hub_error(self, paths[0], e) from None
        by_path = {getattr(i, "path", None): i for i in infos}
        out = []
        for path in paths:
            info = by_path.get(path)
            if info is None:
                raise DownloadError(f"{self.name}: has no file {path}; check --variant and --repo-id")
            lfs = getattr(info, "lfs", None)
            sha = getattr(lfs, "sha256", None) or (lfs.get("sha256") if isinstance(lfs, dict) else None)
            out.append(RemoteFile(path, getattr(info, "size", None), sha))
        return out

    def fetch(self, path: str, part: Path, on_bytes: Callable[[int], None]) -> None:
        hub = self._hub()
        staging = self.staging or part.parent / ".hf_download"
        try:  # huggingface_hub resumes its own .incomplete files under staging
            got = Path(hub.hf_hub_download(self.repo_id, path, repo_type="dataset",
                                           revision=self.revision, local_dir=staging))
        except Exception as e:  # noqa: BLE001
            raise _hub_error(self, path, e) from None
        part.unlink(missing_ok=True)
        shutil.move(str(got), part)
        on_bytes(part.stat().st_size)


def _hub_error(src: HubSource, path: str, e: Exception) -> DownloadError:
    names = {c.__name__ for c in type(e).__mro__}
    if names & {"RepositoryNotFoundError", "GatedRepoError"}:
        return DownloadError(f"{src.name}: repository not found or not accessible; check --repo-id "
                             "(and HF_TOKEN for a private repo)")
    if names & {"EntryNotFoundError", "RemoteEntryNotFoundError", "RevisionNotFoundError"}:
        return DownloadError(f"{src.name}: has no file {path}; check --variant and --repo-id")
    if (isinstance(e, OSError) or names & {"LocalEntryNotFoundError", "OfflineModeIsEnabled"}
            or any("Connect" in n or "Timeout" in n for n in names)):
        return _offline(src.name, e)
    return DownloadError(f"{src.name}: {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def _offline(where: str, e: BaseException) -> DownloadError:
    reason = getattr(e, "reason", None) or e
    return DownloadError(f"cannot reach {where} ({reason}); are you offline? Check the network (or "
                         f"HF_ENDPOINT / proxy settings), then {_RERUN}, or pass --source DIR|URL")


def _append(stream, part: Path, start: int, on_bytes: Callable[[int], None], path: str) -> None:
    part.parent.mkdir(parents=True, exist_ok=True)
    got = 0
    try:
        with open(part, "ab" if start else "wb") as f:
            while chunk := stream.read(_CHUNK):
                f.write(chunk)
                got += len(chunk)
                on_bytes(len(chunk))
    except (OSError, ValueError, http.client.HTTPException) as e:  # IncompleteRead: a cut connection
        raise DownloadError(f"{path}: interrupted after {start + got:,} bytes ({type(e).__name__}); "
                            f"{_RERUN}") from None


# --- manifest -> file list ------------------------------------------------------------------------
def plan_files(manifest: dict, variant: str, train_shards: int, repo: str = "the manifest") -> dict:
    """Repo-relative paths (inside the prefix) of the val shards, first N train shards, tokenizer."""
    name = f"fineweb10B_{variant}"
    entries = manifest.get("datasets") or []
    entry = next((d for d in entries if isinstance(d, dict) and d.get("name") == name), None)
    if entry is None:
        have = ", ".join(str(d.get("name")) for d in entries if isinstance(d, dict)) or "none"
        hint = f"; {variant} is in {VARIANT_REPOS[variant]}: pass --repo-id" if variant in VARIANT_REPOS else ""
        raise DownloadError(f"{repo}: manifest.json has no dataset {name} (it has: {have}){hint}")
    stats = entry.get("stats") or {}
    try:
        n_train, n_val = int(stats["files_train"]), int(stats["files_val"])
    except (KeyError, TypeError, ValueError):
        raise DownloadError(f"{repo}: manifest entry {name} lacks stats.files_train/files_val") from None
    if not 0 <= train_shards <= n_train:
        raise DownloadError(f"--train-shards {train_shards}: {repo} has {n_train} {variant} train shards")
    base = f"datasets/{name}"
    tok_name = entry.get("tokenizer_name")
    tok = next((t for t in manifest.get("tokenizers") or [] if isinstance(t, dict) and t.get("name") == tok_name), None)
    tok_files = [str(tok[k]) for k in ("model_path", "vocab_path", "path") if tok and tok.get(k)]
    if not tok_files:
        raise DownloadError(f"{repo}: manifest.json has no tokenizer files for {tok_name!r} ({name})")
    return {"val": [f"{base}/fineweb_val_{i:06d}.bin" for i in range(n_val)],
            "train": [f"{base}/fineweb_train_{i:06d}.bin" for i in range(train_shards)],
            "tokenizer": tok_files}


# --- download --------------------------------------------------------------------------------------
def download_fineweb(variant: str, train_shards: int, out: str | os.PathLike, source: Source,
                     progress: bool = True) -> dict:
    """Fetch the manifest, then val shards, the first train_shards train shards and the tokenizer."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record = _read_record(out)
    manifest_path = out / "manifest.json"
    try:
        _fetch_verified(source, f"{REMOTE_PREFIX}/manifest.json", manifest_path,
                        RemoteFile("manifest.json"), None, force=True)
    except DownloadError as e:
        if not (manifest_path.is_file() and record.get("source") == source.name):
            raise
        print(f"loopgolf: warning: {e}; using the manifest downloaded earlier from {source.name}",
              file=sys.stderr)
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DownloadError(f"{manifest_path}: not valid JSON ({e}); delete it and {_RERUN}") from None
    files = plan_files(manifest, variant, train_shards, source.name)
    extra = manifest.get("files") if isinstance(manifest.get("files"), dict) else {}
    todo = [p for group in ("val", "train", "tokenizer") for p in files[group]]
    stat_many = getattr(source, "stat_many", None)
    found = (stat_many([f"{REMOTE_PREFIX}/{p}" for p in todo]) if stat_many
             else [source.stat(f"{REMOTE_PREFIX}/{p}") for p in todo])
    remote = {p: _merge(f, extra.get(p)) for p, f in zip(todo, found)}
    record["source"] = source.name
    done, skipped = [], []
    need = [p for p in todo if not _is_current(out / p, remote[p], record["files"].get(p))]
    skipped = [p for p in todo if p not in need]
    total = sum(remote[p].size or 0 for p in need)
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"fineweb {variant}", file=sys.stderr,
              disable=not progress, dynamic_ncols=True) as bar:
        for p in need:
            bar.set_postfix_str(Path(p).name)
            entry = _fetch_verified(source, f"{REMOTE_PREFIX}/{p}", out / p, remote[p], bar.update)
            record["files"][p] = entry
            atomic_write_text(out / RECORD, json.dumps(record, indent=2, sort_keys=True) + "\n")
            done.append(p)
    atomic_write_text(out / RECORD, json.dumps(record, indent=2, sort_keys=True) + "\n")
    data_dir = out / "datasets" / f"fineweb10B_{variant}"
    model = next((out / p for p in files["tokenizer"] if p.endswith(".model")), None)
    return {"source": source.name, "variant": variant, "dir": str(data_dir),
            "train": str(data_dir / "fineweb_train_*.bin"), "val": str(data_dir / "fineweb_val_*.bin"),
            "tokenizer": str(model) if model else None, "downloaded": done, "skipped": skipped,
            "train_shards": len(files["train"]), "val_shards": len(files["val"])}


def _merge(found: RemoteFile, extra) -> RemoteFile:
    if not isinstance(extra, dict):
        return found
    return RemoteFile(found.path, extra.get("size", found.size), extra.get("sha256", found.sha256))


def _read_record(out: Path) -> dict:
    try:
        rec = json.loads((out / RECORD).read_text(encoding="utf-8"))
        if isinstance(rec, dict) and isinstance(rec.get("files"), dict):
            return rec
    except (OSError, ValueError):
        pass
    return {"files": {}}


def _is_current(dest: Path, remote: RemoteFile, entry: dict | None) -> bool:
    """True when dest is complete: recorded with this size/hash, or (not recorded) verifiable now."""
    if not dest.is_file():
        return False
    size = dest.stat().st_size
    if remote.size is not None and size != remote.size:
        return False
    if entry is not None:
        return entry.get("size") == size and remote.sha256 in (None, entry.get("sha256"))
    try:  # e.g. files from the challenge's own downloader: accept them if they check out
        _verify(dest, remote, dest.name)
    except DownloadError:
        return False
    return True


def _fetch_verified(source: Source, remote_path: str, dest: Path, remote: RemoteFile,
                    on_bytes: Callable[[int], None] | None, force: bool = False) -> dict:
    part = dest.with_name(dest.name + ".part")
    if force:
        part.unlink(missing_ok=True)
    source.fetch(remote_path, part, on_bytes or (lambda n: None))
    size = part.stat().st_size
    if remote.size is not None and size < remote.size:
        raise DownloadError(f"{remote_path}: interrupted after {size:,} of {remote.size:,} bytes; "
                            f"{_RERUN}")
    try:
        entry = _verify(part, remote, remote_path)
    except DownloadError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    return entry


def _verify(path: Path, remote: RemoteFile, label: str) -> dict:
    size = path.stat().st_size
    if remote.size is not None and size != remote.size:
        raise DownloadError(f"{label}: {size:,} bytes but the source says {remote.size:,}; the file "
                            f"was removed, {_RERUN} to fetch it again")
    digest = _sha256(path)
    if remote.sha256 is not None:
        if digest != remote.sha256.lower():
            raise DownloadError(f"{label}: SHA-256 {digest} but the source says {remote.sha256}; the "
                                f"corrupt file was removed: {_RERUN}; if it fails again the remote "
                                "file differs from its manifest")
        checked = "sha256"
    else:
        checked = "size"
        if label.endswith(".bin"):
            try:
                read_header(path)
            except ShardError as e:
                raise DownloadError(f"{label}: not a valid shard ({e}); {_RERUN}") from None
            checked = "size+header"
    return {"size": size, "sha256": digest, "checked": checked}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK * 8):
            h.update(chunk)
    return h.hexdigest()


def make_source(source: str | None, repo_id: str, revision: str | None = None) -> Source:
    """--source URL -> HttpSource, --source DIR -> LocalFolderSource, none -> the hub repo."""
    if not source:
        return HubSource(repo_id, revision)
    if source.startswith(("http://", "https://")):
        return HttpSource(source)
    if not Path(source).is_dir():
        raise DownloadError(f"--source {source}: not a folder or an http(s) URL")
    return LocalFolderSource(source)
