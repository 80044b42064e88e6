#!/usr/bin/env bash
# Cloud TPU VM or pod slice: create, copy the code, install, sync the data, train.
#
#   TPU_NAME=fer-v4 ZONE=us-central2-b ACCELERATOR=v4-8 \
#   DATA=gs://my-bucket/ferjax_datasets WORKDIR=gs://my-bucket/runs/rafdb_mek \
#   launch/tpu_vm.sh configs/rafdb.py:mek
#
# DATA holds the TFDS folders written by `python -m ferjax.data.build` (build once on any
# machine, then `gcloud storage cp -r ~/ferjax_datasets/rafdb $DATA/`). Every TPU host
# copies them to local disk (FER sets are a few GB) and reads ArrayRecord from there.
# WORKDIR may be a gs:// path: orbax, tensorboardX (google-cloud-storage) and ferjax's own
# files (etils.epath over gcsfs, both in the [tpu] extra) write to GCS directly.
set -euo pipefail
CONFIG=${1:?usage: launch/tpu_vm.sh CONFIG [extra flags]}
shift
# Extra flags travel inside one remote command line: quote each so spaces survive.
EXTRA=$(printf '%q ' "$@")
cd "$(dirname "$0")/.."  # ship the repository, whatever the current directory
: "${TPU_NAME:?}" "${ZONE:?}" "${DATA:?}" "${WORKDIR:?}"
ACCELERATOR=${ACCELERATOR:-v4-8}
VERSION=${VERSION:-tpu-ubuntu2204-base}

if ! gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone "$ZONE" >/dev/null 2>&1; then
  gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$ZONE" \
    --accelerator-type "$ACCELERATOR" --version "$VERSION"
fi

# Ship the working tree (without local runs and venvs) to every host.
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
tar czf "$STAGE/ferjax.tgz" --exclude .venv --exclude runs --exclude .git .
gcloud compute tpus tpu-vm scp "$STAGE/ferjax.tgz" "$TPU_NAME":~/ --zone "$ZONE" --worker=all

REMOTE=$(cat <<REMOTE_EOF
set -euo pipefail
mkdir -p ~/ferjax && tar xzf ~/ferjax.tgz -C ~/ferjax && cd ~/ferjax
python3 -m venv ~/venv && . ~/venv/bin/activate
pip install -q -e '.[tpu]'
mkdir -p ~/ferjax_datasets && gcloud storage rsync -r "$DATA" ~/ferjax_datasets
export FERJAX_DATA_DIR=~/ferjax_datasets
python -m ferjax.main --config "$CONFIG" --workdir "$WORKDIR" --distributed \
  --config.train.progress_bar=False $EXTRA
REMOTE_EOF
)
# --worker=all starts one process per host; jax.distributed.initialize() finds the others.
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "$REMOTE"
