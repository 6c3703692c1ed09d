#!/bin/bash
# Prepare, on the development machine, the git-ignored folders a GPU session carries to the device:
#   .stage/a  bench train-00 (48 MiB)      .stage/b  bench train-01 (48 MiB)
#   .stage/c  bench val + the sp1024 tokenizer
#   .whl      zstandard + brotli wheels for the box's Python 3.12 (it has neither)
#   .ref      published scripts, from a fetched mirror of openai/parameter-golf (never committed):
#             train_gpt.py (the challenge's reference) and prN_train_gpt.py for each PR asked for
# A device call carries at most 64 MiB, so one call takes .stage/a + .stage/c + .whl + .ref and the
# next (on the still-warm machine) .stage/b. Every script a call runs must itself be carried.
#
# usage: bash bench/scripts/device_prepare.sh [MIRROR_GIT_DIR] [PR:PATH ...]
#   MIRROR_GIT_DIR defaults to /work/.mirror/openai+parameter-golf/repo; each PR:PATH writes
#   .ref/prPR_train_gpt.py from refs/pull/PR/head:PATH; a bare PR (e.g. 21) takes the train_gpt.py of
#   its fidelity profile's record folder (lab/script_profiles.py), the file `loopgolf fidelity --pr` accepts.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
SHARED=${SHARED:-../shared}
MIRROR=${1:-/work/.mirror/openai+parameter-golf/repo}
shift || true
mkdir -p .git/info
for d in /.stage/ /.whl/ /.ref/; do grep -qxF "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude; done
mkdir -p .stage/a .stage/b .stage/c .whl .ref
cp -u "$SHARED/data/bench/train-00.jsonl.zst" .stage/a/
cp -u "$SHARED/data/bench/train-01.jsonl.zst" .stage/b/
cp -u "$SHARED/data/bench/val.jsonl.zst" "$SHARED/data/tokenizers/fineweb_1024_bpe.model" .stage/c/
if ! ls .whl/zstandard-*.whl .whl/brotli-*.whl >/dev/null 2>&1; then
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl zstandard brotli
fi
if [ -d "$MIRROR" ]; then
  git -C "$MIRROR" show HEAD:train_gpt.py > .ref/train_gpt.py
  for spec in "$@"; do
    pr=${spec%%:*}; path=${spec#*:}
    if [ "$path" = "$spec" ]; then  # a bare PR number: the record folder of its `loopgolf fidelity --pr` profile
      path=$(PYTHONPATH=src python3 -c "from loopgolf.lab.script_profiles import profile_for as p; print(p($pr).records)")/train_gpt.py
    fi
    git -C "$MIRROR" show "refs/pull/$pr/head:$path" > ".ref/pr${pr}_train_gpt.py"
    echo ".ref/pr${pr}_train_gpt.py <- refs/pull/$pr/head:$path"
  done
else
  echo "no mirror at $MIRROR: fetch openai/parameter-golf first (the published scripts stay out of the repo)" >&2
fi
du -sh .stage/* .whl .ref
