"""The base config (every field, its default and meaning) and the method presets.

Dataset configs in `configs/` start from `base_config()`, set their data fields and call
`apply_method(config, name)`. A preset only sets fields; any field can still be changed
on the command line (`--config.loss.terms.rac=0.5`).
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

METHODS = ("baseline", "rul_cbam", "mek", "mek_claimed", "mek_swin", "rlrcnet")


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0                      # seeds parameters, data order, augmentation and dropout
    c.method = "baseline"           # the preset applied last (informational)

    c.data = d = ml_collections.ConfigDict()
    d.name = "synthetic_fer"        # dataset builder (ferjax.data.builders.BUILDERS)
    d.config = placeholder(str)     # builder config, e.g. '7' / '8' classes; None = its first
    d.data_dir = ""                 # TFDS data dir; '' = $FERJAX_DATA_DIR or ~/ferjax_datasets
    d.manual_dir = ""               # the downloaded dataset folder, used to build on first use
    d.auto_build = True             # build the dataset on first use when it is missing
    d.on_bad_image = "skip"         # 'skip' (count) or 'fail' on unreadable images when building
    d.train_split = "train"         # split to train on
    d.eval_split = "test"           # split evaluated during and after training, or 'holdout'
    d.fold = -1                     # subject-independent CV fold (CK+); -1 = no folds
    d.num_folds = 10                # number of CV folds when fold >= 0
    d.holdout_fraction = 0.0        # per-class part of train_split held out as split 'holdout'
    d.train_label_file = ""         # '<image> <label 1..K>' lines replacing the training labels
    d.imbalance_factor = 0.0        # train on a long-tailed subset n_max/IF..n_max; 0 = off
    d.label_noise = 0.0             # fraction of training labels swapped to another class
    d.image_size = 224              # square model input side
    d.host_image_size = 0           # side of host batches (0 = image_size); the step resizes them
    d.train_resize = "bilinear"     # training images' resize to image_size: 'bilinear'/'bicubic'
    d.sampler = "uniform"           # 'uniform', 'class_balanced', 'reversed' (pipeline.SAMPLERS)
    d.second_sampler = "reversed"   # sampler of the second stream (dual-branch forward only)
    d.num_workers = 0               # grain worker processes (0 = read in the main process)

    c.model = m = ml_collections.ConfigDict()
    m.name = "resnet18"             # 'resnet18', 'shufflenet_v2', 'rlrcnet' or 'swin_t'
    m.head = placeholder(str)       # 'linear', 'rul', 'dual_branch'; None = the model's default
    m.dtype = "float32"             # compute dtype, 'float32' or 'bfloat16' (params stay fp32)
    m.width = 64                    # ResNet first-stage channels
    m.cbam_placement = "none"       # ResNet CBAM: 'block', 'stage', 'final' or 'none'
    m.cbam_reduction = 16           # CBAM channel-MLP reduction ratio
    m.cbam_gate_bias = 0.0          # CBAM gate bias at init (3.0 opens gates to ~0.95)
    m.width_mult = 1.0              # ShuffleNetV2 width: 0.5, 1.0, 1.5, 2.0
    m.stem_width = 24               # ShuffleNetV2 stem channels
    m.channels = ()                 # ShuffleNetV2 explicit stage widths (overrides width_mult)
    m.kernel_size = placeholder(int)  # ShuffleNet depthwise kernel; None = default (3; RLR 5)
    m.clip = placeholder(bool)      # drop the main branch's first 1x1; None = model default
    m.clip_stride2 = True           # also clip stride-2 units (RLR-CNet)
    m.activation = placeholder(str)  # 'relu', 'mish', 'beta_mish'; None = model default
    m.beta = 1.5                    # β of β-Mish
    m.sa_placement = placeholder(str)  # 'none', 'last', 'stages', 'branch'; None = default
    m.sa_groups = 8                 # Shuffle Attention groups (2G must divide the channels)
    m.patch_size = 2                # Swin patch side (MEK: 2 at 112 px; ImageNet: 4 at 224)
    m.embed_dim = 96                # Swin first-stage channels (Swin-T 96)
    m.depths = (2, 2, 6, 2)         # Swin blocks per stage
    m.num_heads = (3, 6, 12, 24)    # Swin attention heads per stage
    m.window = 7                    # Swin attention window side
    m.drop_path = 0.1               # Swin stochastic depth at the last block (linear from 0)
    m.dropout = 0.0                 # dropout before the linear classifier
    m.rul_dim = 64                  # RUL feature dimension
    m.rul_dropout = 0.4             # RUL branch dropout
    m.pretrained = ""               # weights file (.npz/.safetensors/.pth), torchvision layout
    m.pretrained_strict = True      # fail on missing / unexpected keys
    m.pretrained_exclude = ()       # regexes of keys to leave untouched (e.g. '^fc\\.', 'cbam')

    c.loss = lo = ml_collections.ConfigDict()
    lo.forward = "single"           # 'single', 'flip_pair', 'uncertainty_mix', 'dual_branch'
    lo.terms = ml_collections.ConfigDict({"ce": 1.0})  # loss term -> weight
    lo.class_weight = "none"        # 'inv_norm_K','max_ratio','mek_style','effective_num','sqrt_inv','none'
    lo.class_weight_reduction = "torch_weighted_mean"  # or 'mean' (spec §7.2)
    lo.label_smoothing = 0.1        # ε of the plain 'label_smoothing' term
    lo.rsl_epsilon = 0.3            # ε of MEK's re-balanced smooth labels
    lo.bbn_alpha_rule = "paper"     # BBN α divisor: 'paper' (T_max) or 'official'
    lo.flip_bn = "joint"            # flip_pair BatchNorm: 'joint' (one 2N pass) or 'separate'
    lo.mix_group_size = 0           # RUL pairs within groups of this many (per-GPU batch); 0 = all

    c.augment = a = ml_collections.ConfigDict()
    a.ops = ("flip", "normalize")   # on-device augmentation ops, in order
    a.normalize = ml_collections.ConfigDict({"mean": (0.485, 0.456, 0.406),
                                             "std": (0.229, 0.224, 0.225)})
    a.flip = ml_collections.ConfigDict({"prob": 0.5})
    a.flip_or_noise = ml_collections.ConfigDict({"prob": 0.5, "noise_std": 0.02148})
    a.affine = ml_collections.ConfigDict({"degrees": 10.0, "scale": (1.0, 1.0),
                                          "translate": 0.0})
    a.crop_pad = ml_collections.ConfigDict({"pad": 8})
    a.color_jitter = ml_collections.ConfigDict({"brightness": 0.2, "contrast": 0.2,
                                                "saturation": 0.2})
    a.erase = ml_collections.ConfigDict({"prob": 0.5, "area": (0.02, 0.25),
                                         "aspect": (0.3, 3.3), "fill": "zero"})
    # timm's RandAugment rand-m9-mstd0.5-inc1: ops per image, magnitude N(9, 0.5) in [0, 10],
    # each op with probability prob; resampling and grey fill as timm passes them to PIL.
    a.rand_augment = ml_collections.ConfigDict({"num_layers": 2, "magnitude": 9.0,
                                                "magnitude_std": 0.5, "magnitude_max": 10.0,
                                                "prob": 0.5, "increasing": True,
                                                "interpolation": "bicubic",
                                                "fill": (128, 128, 128), "translate_pct": 0.45})
    a.random_mask = ml_collections.ConfigDict({"prob": 0.5, "max_patches": 3,
                                               "area": (0.02, 0.10), "aspect": (0.3, 3.3),
                                               "fill": "random"})

    c.optim = o = ml_collections.ConfigDict()
    o.name = "adam_l2"              # 'adam_l2' (coupled L2), 'adamw' or 'sgd'
    o.lr = 2e-4                     # base learning rate
    o.classifier_lr_multiplier = 1.0  # lr factor of the final classifier (RUL: 10)
    o.weight_decay = 1e-4           # L2 / decoupled weight decay
    o.decay_all = True              # decay every parameter (torch default) or only kernels
    o.b1 = 0.9                      # Adam β1
    o.b2 = 0.999                    # Adam β2
    o.eps = 1e-8                    # Adam ε
    o.momentum = 0.9                # SGD momentum
    o.nesterov = False              # SGD Nesterov
    o.schedule = "exponential"      # 'constant', 'exponential', 'cosine', 'multistep'
    o.decay_rate = 0.9              # exponential: per-epoch factor; multistep: factor per milestone
    o.milestones = (120, 160)       # multistep epochs
    o.warmup_epochs = 0.0           # linear warm-up length
    o.warmup_steps = 0              # linear warm-up length in steps; overrides warmup_epochs
    o.warmup_start_factor = 0.0     # warm-up starts at lr · this
    o.min_lr = 0.0                  # cosine floor
    o.clip_norm = 0.0               # global-norm gradient clipping; 0 = off

    c.train = t = ml_collections.ConfigDict()
    t.batch_size = 64               # global batch (split over all devices)
    t.microbatches = 1              # parts a batch runs as, one after another, gradients averaged
    t.epochs = 60                   # training length in epochs (when num_steps <= 0)
    t.num_steps = -1                # training length in steps; overrides epochs when > 0
    t.eval_every_steps = -1         # evaluation period; -1 = once per epoch
    t.checkpoint_every_steps = -1   # checkpoint period; -1 = at every evaluation
    t.keep_checkpoints = 3          # latest checkpoints kept (the best is kept separately)
    t.log_every_steps = 20          # train-metric logging period
    t.mean_of_last_k = 5            # k of the 'mean of last k evaluations' summary
    t.early_stop_patience = 0       # stop after this many evals without a new best; 0 = off
    t.on_nonfinite = "stop"         # NaN/Inf loss: 'stop' or 'skip' the step
    t.max_nonfinite_steps = 10      # with 'skip': stop after this many bad steps
    t.progress_bar = True           # tqdm progress bar with rate and ETA
    t.tensorboard = True            # TensorBoard event files (tensorboardX) besides JSONL
    t.profile_steps = 0             # jax.profiler trace of this many steps to <workdir>/profile

    c.eval = e = ml_collections.ConfigDict()
    e.batch_size = 256              # global eval batch (padded; every example counts once)
    e.final_splits = ""             # 'test,validation': evaluated after training, last and best
    e.track_splits = ""             # also scored at every evaluation; selection stays on eval_split
    e.flip_average = False          # test-time flip: mean class probabilities of image and mirror
    return c


def apply_method(c: ml_collections.ConfigDict, method: str) -> ml_collections.ConfigDict:
    """Sets the fields of a method preset (spec §2-4) on config `c`, in place."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    c.method = method
    if method == "baseline":
        c.loss.forward = "single"
        c.loss.terms = ml_collections.ConfigDict({"ce": 1.0})
        c.augment.ops = ("flip_or_noise", "normalize", "erase")
    elif method == "rul_cbam":  # Fan et al. 2022 on RUL (spec §2)
        c.model.name = "resnet18"
        c.model.cbam_placement = "block"
        c.model.head = "rul"
        c.loss.forward = "uncertainty_mix"
        c.loss.terms = ml_collections.ConfigDict({"rul_add_up": 1.0})
        c.loss.class_weight = "inv_norm_K"
        c.augment.ops = ("flip_or_noise", "normalize", "erase")
        c.optim.classifier_lr_multiplier = 10.0
    elif method == "mek":  # Zhang et al. 2023, ResNet-18 recipe (spec §3.7)
        c.loss.forward = "flip_pair"
        c.loss.terms = ml_collections.ConfigDict({"rsl": 1.0, "rac": 0.1})
        c.loss.rsl_epsilon = 0.3
        c.augment.ops = ("flip_or_noise", "normalize", "erase")
    elif method == "mek_claimed":
        # MEK with the ResNet-18 recipe a third-party reproduction attributes to the paper
        # (spec §3.7 [2ND], unverified): ε = 0.1, λ = 2, Adam lr 1e-4 (coupled wd 1e-4,
        # ExpLR 0.9 per epoch, 60 epochs: the defaults). 'mek' keeps the official code's
        # ε = 0.3, λ = 0.1.
        apply_method(c, "mek")
        c.method = method
        c.loss.terms = ml_collections.ConfigDict({"rsl": 1.0, "rac": 2.0})
        c.loss.rsl_epsilon = 0.1
        c.optim.lr = 1e-4
    elif method == "mek_swin":
        # MEK's official code (spec §3.4-3.7): Swin-T on 112 px faces, AdamW 3.125e-5 with
        # wd 0.05 on all parameters, 2,000 warm-up steps from lr/1000, cosine to lr/100 at
        # 60,000 steps of batch 32, gradients clipped at norm 5, evaluation every 1,000
        # steps; flip, RandAugment rand-m9-mstd0.5-inc1 (bicubic, fill 128 = the 0.5 mean),
        # (0.5, 0.5) normalisation, timm's pixel-noise erasing (p 0.25).
        apply_method(c, "mek")
        c.method = method
        c.model.name = "swin_t"
        # From MEK's MS-Celeb-1M Swin file: the encoder only (its final LayerNorm and face
        # head are unused there; MEK adds a fresh LayerNorm and the 7-class classifier).
        c.model.pretrained_exclude = (r"^fc\.", r"^norm\.", r"^feature\.")
        c.data.image_size = 112
        c.data.train_resize = "bicubic"  # timm's train transform; the test Resize is bilinear
        c.augment.ops = ("flip", "rand_augment", "normalize", "erase")
        c.augment.normalize = ml_collections.ConfigDict({"mean": (0.5,) * 3, "std": (0.5,) * 3})
        c.augment.erase = ml_collections.ConfigDict({"prob": 0.25, "area": (0.02, 1 / 3),
                                                     "aspect": (0.3, 1 / 0.3),
                                                     "fill": "random"})
        c.optim.update(name="adamw", lr=3.125e-5, weight_decay=0.05, decay_all=True,
                       schedule="cosine", min_lr=3.125e-7, warmup_steps=2000,
                       warmup_start_factor=1e-3, clip_norm=5.0)
        c.train.batch_size = 32
        c.train.num_steps = 60_000
        c.train.eval_every_steps = 1000
    elif method == "rlrcnet":  # RLR-CNet (spec §4)
        c.model.name = "rlrcnet"
        c.model.head = "dual_branch"
        c.loss.forward = "dual_branch"
        c.loss.terms = ml_collections.ConfigDict({"bbn": 1.0})
        c.data.second_sampler = "reversed"
        c.augment.ops = ("crop_pad", "flip", "affine", "normalize", "random_mask")
        c.optim.name = "sgd"
        c.train.batch_size = 128
        c.optim.lr = 0.05            # for batch 128; scale linearly with the batch size
        c.optim.weight_decay = 5e-4
        c.optim.decay_all = False
        c.optim.schedule = "cosine"
        c.optim.warmup_epochs = 5.0
        c.train.epochs = 100
    return c


def check_fields(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first field of `config` that `base_config()` lacks (a
    typo in a config file would otherwise be a new field nothing reads). Exempt: the loss
    terms (a name -> weight mapping, checked against the registered terms) and the
    parameter groups of listed augmentation ops that `base_config()` does not know (ops
    registered outside ferjax); the known ops' parameters are checked like any field."""
    import difflib

    def walk(node, reference, path):
        for key in node.keys():
            name = f"{path}.{key}"
            if name == "config.loss.terms" or (
                    path == "config.augment" and key in tuple(config.augment.ops)
                    and key not in reference):
                continue
            if key not in reference:
                close = difflib.get_close_matches(key, list(reference.keys()), n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ValueError(f"{name} is not a ferjax config field ({hint}the fields of "
                                 f"{path}: {', '.join(sorted(reference.keys()))})")
            if isinstance(reference[key], ml_collections.ConfigDict) and hasattr(
                    node[key], "keys"):
                walk(node[key], reference[key], name)

    walk(config, base_config(), "config")


def load_config_file(path, arg: str | None = None) -> ml_collections.ConfigDict:
    """`get_config(arg)` of a config file (what `--config path:arg` does), for scripts/tests;
    `get_config()` without an arg, as `--config path` calls it."""
    import importlib.util
    import pathlib
    spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config() if arg is None else module.get_config(arg)


def parse_arg(arg: str | None, **defaults) -> dict:
    """'mek,smoke' or 'method=mek,classes=8' -> dict over the keys of `defaults`, which a
    config declares (flags with the default False); a bare word sets a flag to True, or
    'method' when it names a method. Anything else is a ValueError naming it."""
    out = dict(defaults)
    flags = [k for k, v in defaults.items() if v is False]
    for item in filter(None, (part.strip() for part in (arg or "").split(","))):
        key, value = (part.strip() for part in item.split("=", 1)) if "=" in item \
            else (item, True)
        if value is True and key in METHODS and "method" in defaults:
            key, value = "method", item
        if key not in defaults or (value is True and key not in flags):
            raise ValueError(
                f"config argument {item!r} not understood; this config takes "
                + ", ".join([f"{k}=..." for k in defaults if k not in flags]
                            + [f"the flag {k!r}" for k in flags])
                + (f", or a method name {METHODS}" if "method" in defaults else ""))
        out[key] = value
    return out
