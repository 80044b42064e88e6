#!/usr/bin/env bash
# Wheels of what ferjax needs and an offline machine lacks (a GPU node that cannot reach
# PyPI, say), fetched on a machine that can:
#
#   launch/offline_wheels.sh HAVE.txt [DEST]
#
# HAVE.txt lists the packages the offline machine already has, one per line, as
# `python3 -m pip list --format=freeze` prints them there (a bare NAME counts as good
# enough). What it has is kept, except ferjax's own requirements at a version ferjax does
# not accept (launch/missing_requirements.py). DEST (default .whl) receives one wheel per
# package to bring, built for TARGET_PYTHON (default 3.12) on manylinux x86-64; a package
# published only as source is built into a wheel here. On the offline machine, from the
# repository root (/tmp/site comes first on the path, so a replacement wins):
#
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site DEST/*.whl
#   export PYTHONPATH=/tmp/site:$PWD
#
# PYTHON picks the interpreter that resolves ferjax's requirements (default python3).
set -euo pipefail
HAVE=${1:?usage: launch/offline_wheels.sh HAVE.txt [DEST]}
DEST=${2:-.whl}
PY=${PYTHON:-python3}
TARGET_PYTHON=${TARGET_PYTHON:-3.12}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$DEST"

# What a fresh install of ferjax with its test extra would take, names and versions.
"$PY" -m pip install -q --dry-run --ignore-installed --report "$WORK/report.json" \
  "${ROOT}[test]" 2>/dev/null
"$PY" "$ROOT/launch/missing_requirements.py" "$WORK/report.json" "$HAVE" > "$WORK/missing.txt"

PLATFORMS=()
for tag in manylinux_2_17 manylinux2014 manylinux_2_24 manylinux_2_27 manylinux_2_28 \
           manylinux_2_31 manylinux_2_34 manylinux_2_35; do
  PLATFORMS+=(--platform "${tag}_x86_64")
done
while read -r requirement note; do
  if ! "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$DEST" \
       --python-version "$TARGET_PYTHON" --implementation cp "${PLATFORMS[@]}" \
       "$requirement" 2>/dev/null; then
    # Published as source only: build it here (only pure-Python ones can travel so).
    "$PY" -m pip wheel -q --no-deps -w "$DEST" "$requirement"
  fi
  echo "$requirement $note"
done < "$WORK/missing.txt"
echo "wheels in $DEST: $(ls "$DEST" | wc -l), $(du -sh "$DEST" | cut -f1)"
