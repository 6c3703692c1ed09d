"""Which failures mean "the input is wrong" (one line, exit 2) and which are bugs, for the CLI.

Expected failures carry a message naming the file or field and the fix; the CLI prints it as one
`loopgolf: error: ...` line and exits 2 instead of showing a traceback. They are:
- any ValueError / RuntimeError subclass defined in loopgolf (bad config, plan, shard, tokenizer,
  corpus, artifact, checkpoint, fit, export, download, diverged training; a new error class in the
  core, e.g. the trainer's, needs no entry here), and a plain ValueError / RuntimeError raised by
  loopgolf's own code (those `raise` statements are written for users);
- a FileNotFoundError with a message; an OSError a user can fix (disk full, permission denied,
  read-only file system), with its path.
Anything else is a bug: one line plus a hint to rerun with --debug for the traceback.
"""
from __future__ import annotations

import errno
from pathlib import Path

# every error class of loopgolf's own (ConfigError, ShardError, ArtifactError, TrainingDiverged, ...)
# is a ValueError / RuntimeError subclass, so `is_expected` needs no list of them; a missing file
# raised by loopgolf with a message (no errno) is the one other expected class
USER_ERRORS = (FileNotFoundError,)

_PACKAGE = Path(__file__).resolve().parents[1]  # src/loopgolf
_OS_FIXES = {
    errno.ENOSPC: "free some space or write elsewhere (--run-dir / --out)",
    errno.EDQUOT: "free some space or write elsewhere (--run-dir / --out)",
    errno.EACCES: "check the permissions or write elsewhere (--run-dir / --out)",
    errno.EPERM: "check the permissions or write elsewhere (--run-dir / --out)",
    errno.EROFS: "the file system is read-only; write elsewhere (--run-dir / --out)",
    errno.EISDIR: "pass a file, not a folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.ENOENT: "check the path",
}


def _defined_in_loopgolf(cls: type) -> bool:
    return any(c.__module__.split(".")[0] == "loopgolf" for c in cls.__mro__)


def _raised_by_loopgolf(e: BaseException) -> bool:
    tb = e.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    try:
        return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE)
    except (OSError, ValueError):
        return False


def is_expected(e: BaseException) -> bool:
    """True when `e` is a failure the user can fix from its message (see the module docstring)."""
    if isinstance(e, USER_ERRORS):
        return True
    if isinstance(e, OSError):
        return e.errno in _OS_FIXES
    if isinstance(e, (ValueError, RuntimeError)):
        return _defined_in_loopgolf(type(e)) or _raised_by_loopgolf(e)
    return False


def one_line(e: BaseException) -> tuple[str, bool]:
    """(the message as a single line, whether the failure is expected)."""
    if isinstance(e, OSError) and e.errno in _OS_FIXES:
        where = f"{e.filename}: " if e.filename else ""
        text = f"{where}{e.strerror or e}; {_OS_FIXES[e.errno]}"
    else:
        text = str(e) or type(e).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    text = " | ".join(lines) if lines else type(e).__name__
    expected = is_expected(e)
    if not expected:
        text = f"{type(e).__name__}: {text}"
    return text, expected
