"""FER2013 (48x48 grey, upsampled to 224): train on Training, select on PublicTest
('validation'), report PrivateTest ('test') — spec §7.11.

    python -m ferjax.data.build --dataset fer2013 --manual_dir ~/data/fer2013
    python -m ferjax.main --config configs/fer2013.py:rlrcnet --workdir runs/fer2013_rlrcnet

Target (paper, not measured here): RLR-CNet 71.14 % (most likely PrivateTest).
':fast' uses 96 px inputs instead of 224 (spec §7.10).
"""

from ferjax.presets import apply_method, base_config, parse_arg


def get_config(arg=None):
    args = parse_arg(arg, method="rlrcnet", fast=False)
    c = base_config()
    c.data.name = "fer2013"
    c.data.image_size = 96 if args.get("fast") else 224
    c.data.host_image_size = 48                    # the images' side: upsampled on device
    c.data.eval_split = "test"
    apply_method(c, args["method"])
    c.train.batch_size = 128
    return c
