#!/usr/bin/env bash
# Wheels of what ferjax needs and an offline machine lacks (a GPU node that cannot reach
# PyPI, say), fetched on a machine that can:
#
#   launch/offline_wheels.sh HAVE.txt [DEST]
#
# HAVE.txt lists the packages the offline machine already has, one per line, as
# `python3 -m pip list --format=freeze` prints them there (versions are ignored: what it
# has is kept). DEST (default .whl) receives one wheel per missing package, built for
# TARGET_PYTHON (default 3.12) on manylinux x86-64; a package published only as source is
# built into a wheel here. On the offline machine, from the repository root:
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
  "$ROOT[test]" 2>/dev/null
"$PY" - "$WORK/report.json" "$HAVE" > "$WORK/missing.txt" <<'EOF'
import json, re, sys
normal = lambda name: re.sub(r"[-_.]+", "-", name.strip().lower())
have = {normal(re.split(r"[=<>@ ]", line, maxsplit=1)[0])
        for line in open(sys.argv[2]) if line.strip() and not line.startswith("#")}
for item in json.load(open(sys.argv[1]))["install"]:
    meta = item["metadata"]
    if normal(meta["name"]) not in have | {"ferjax"}:
        print(f"{meta['name']}=={meta['version']}")
EOF

PLATFORMS=()
for tag in manylinux_2_17 manylinux2014 manylinux_2_24 manylinux_2_27 manylinux_2_28 \
           manylinux_2_31 manylinux_2_34 manylinux_2_35; do
  PLATFORMS+=(--platform "${tag}_x86_64")
done
while read -r requirement; do
  if ! "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$DEST" \
       --python-version "$TARGET_PYTHON" --implementation cp "${PLATFORMS[@]}" \
       "$requirement" 2>/dev/null; then
    # Published as source only: build it here (only pure-Python ones can travel so).
    "$PY" -m pip wheel -q --no-deps -w "$DEST" "$requirement"
  fi
  echo "$requirement"
done < "$WORK/missing.txt"
echo "wheels in $DEST: $(ls "$DEST" | wc -l), $(du -sh "$DEST" | cut -f1)"
