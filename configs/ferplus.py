"""FERPlus majority-vote labels on FER2013 images; 7 classes (contempt dropped, as EAC/MEK
do) or 8 with ':classes=8'.

    python -m ferjax.data.build --dataset ferplus --config 7 --manual_dir ~/data/ferplus
    python -m ferjax.main --config configs/ferplus.py --workdir runs/ferplus_mek

Targets (not measured here): RUL ≈ 88.8 % (from memory); MEK's FERPlus numbers are not
retrievable (a 2025 follow-up reports beating it by +0.83 overall / +1.23 mean).
"""

from ferjax.presets import apply_method, base_config, parse_arg


def get_config(arg=None):
    args = parse_arg(arg, method="mek", classes="7")
    c = base_config()
    c.data.name = "ferplus"
    c.data.config = str(args["classes"])
    c.data.image_size = 224
    c.data.host_image_size = 48                    # the images' side: upsampled on device
    apply_method(c, args["method"])
    c.train.batch_size = 64
    if c.optim.name == "sgd":
        c.optim.lr = 0.05 * 64 / 128  # linear scaling from the preset's batch 128
    if c.model.name == "resnet18":
        c.model.pretrained_strict = False
        c.model.pretrained_exclude = (r"^fc\.",)
    return c
