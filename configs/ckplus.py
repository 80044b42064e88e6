"""CK+ last-3-frames set, 10-fold subject-independent cross-validation (spec §5.5).

    python -m ferjax.data.build --dataset ckplus --manual_dir ~/data/CK+
    for f in 0 1 2 3 4 5 6 7 8 9; do
      python -m ferjax.main --config configs/ckplus.py:rlrcnet,fold=$f --workdir runs/ck/fold$f
    done
    python -m ferjax.summarize runs/ck/fold*

Report the mean over folds; summarize prints it, with the pooled 10-fold result. Target
(paper, not measured here): RLR-CNet 98.04 %.
The 7 CK+ classes include contempt, so labels live in the 8-class canonical space with
neutral unused (use builder config 'last3_neutral' to add first frames as neutral).
"""

from ferjax.presets import apply_method, base_config, parse_arg


def get_config(arg=None):
    args = parse_arg(arg, method="rlrcnet", fold="0")
    c = base_config()
    c.data.name = "ckplus"
    c.data.config = "last3"
    c.data.fold = int(args["fold"])
    c.data.num_folds = 10
    c.data.image_size = 224
    apply_method(c, args["method"])
    c.train.batch_size = 32
    if c.optim.name == "sgd":
        c.optim.lr = 0.05 * 32 / 128  # linear scaling from the preset's batch 128
    c.train.epochs = 50
    return c
