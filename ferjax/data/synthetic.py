"""Procedurally drawn faces with the 7 basic expressions (canonical order).

Each face varies in skin tone, head pose (rotation, shift, scale), lighting, background
and occluders. Expression is carried by brows (height, inner tilt), eyes (openness) and
mouth (curvature, opening, width, asymmetry), drawn at a random intensity between neutral
and the full expression, so weak expressions overlap neighbours the way real ones do:
fear/surprise share raised brows and wide eyes, disgust/anger share lowered brows,
sadness/neutral differ only by a slight frown and tilted brows. `min_intensity` and
`param_noise_scale` set how much the classes overlap (the dataset's difficulty).
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# brow_raise, brow_tilt (inner end up > 0), eye_open, mouth_curve (smile > 0),
# mouth_open, mouth_width, asymmetry; canonical order Su, Fe, Di, Ha, Sa, An, Ne.
EXPRESSIONS = np.array([
    [1.0, 0.0, 1.5, 0.0, 1.0, 0.7, 0.0],     # surprise
    [0.8, 0.7, 1.4, -0.3, 0.6, 1.15, 0.0],   # fear
    [-0.5, -0.4, 0.6, -0.6, 0.15, 0.9, 1.0],  # disgust
    [0.1, 0.0, 0.75, 1.0, 0.35, 1.15, 0.0],  # happiness
    [0.1, 0.8, 0.75, -0.7, 0.0, 0.9, 0.0],   # sadness
    [-0.9, -0.9, 0.9, -0.3, 0.05, 0.85, 0.0],  # anger
    [0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0],     # neutral
])
PARAM_NOISE = np.array([0.3, 0.3, 0.22, 0.3, 0.15, 0.12, 0.3])
# Where a noisy label goes: the confusable partner of each class.
CONFUSABLE = {0: (1,), 1: (0,), 2: (5,), 3: (6,), 4: (6,), 5: (2,), 6: (4,)}
RAFDB_TRAIN_COUNTS = np.array([1290, 281, 717, 4772, 1982, 705, 2524], np.float64)
SKIN_TONES = np.array([[255, 224, 196], [241, 194, 150], [224, 172, 105], [198, 134, 66],
                       [141, 85, 36], [92, 56, 31]], np.float64)
CANVAS = 128
# Difficulty of the default faces (synthetic_fer 1.1.0); the builder configs set their own.
MIN_INTENSITY = 0.6
PARAM_NOISE_SCALE = 0.6


def long_tail_counts(total: int, imbalance_ratio: float) -> np.ndarray:
    """Class counts shaped like RAF-DB's training set, rescaled to `total` and to the given
    max/min ratio (RAF-DB's own is 17)."""
    if imbalance_ratio < 1:
        raise ValueError(f"imbalance_ratio must be >= 1, got {imbalance_ratio}")
    gamma = math.log(imbalance_ratio) / math.log(RAFDB_TRAIN_COUNTS.max() /
                                                 RAFDB_TRAIN_COUNTS.min())
    p = RAFDB_TRAIN_COUNTS ** gamma
    counts = np.maximum(1, np.round(p / p.sum() * total)).astype(np.int64)
    return counts


def noisy_label(label: int, rng: np.random.Generator, noise: float) -> int:
    """With probability `noise`, the label becomes a confusable class."""
    if rng.random() < noise:
        return int(rng.choice(CONFUSABLE[label]))
    return label


def expression_params(label: int, rng: np.random.Generator,
                      min_intensity: float = MIN_INTENSITY,
                      param_noise_scale: float = PARAM_NOISE_SCALE) -> np.ndarray:
    """Face parameters: between neutral and the full expression at a random intensity in
    [min_intensity, 1], plus per-parameter noise (PARAM_NOISE · param_noise_scale)."""
    intensity = rng.uniform(min_intensity, 1.0)
    target = EXPRESSIONS[6] + intensity * (EXPRESSIONS[label] - EXPRESSIONS[6])
    return target + rng.normal(0.0, PARAM_NOISE * param_noise_scale)


def _background(rng) -> Image.Image:
    a, b = rng.uniform(30, 230, size=(2, 3))
    t = np.linspace(0, 1, CANVAS)[:, None, None]
    grad = a * (1 - t) + b * t
    img = np.broadcast_to(grad, (CANVAS, CANVAS, 3)) + rng.normal(0, 6, (CANVAS, CANVAS, 3))
    if rng.random() < 0.5:
        img = img.transpose(1, 0, 2)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _draw_face(params, rng) -> Image.Image:
    raise_, tilt, eye_open, curve, mouth_open, width, asym = params
    eye_open = max(eye_open, 0.12)
    layer = Image.new("RGBA", (CANVAS, CANVAS), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    skin = SKIN_TONES[rng.integers(len(SKIN_TONES))] + rng.normal(0, 10, 3)
    skin = tuple(int(v) for v in np.clip(skin, 0, 255))
    dark = tuple(int(v * 0.35) for v in skin)
    hair = tuple(int(v) for v in rng.uniform(10, 120, 3))
    cx = cy = CANVAS / 2
    fw, fh = 36 + rng.normal(0, 2), 45 + rng.normal(0, 2)
    d.ellipse([cx - fw - 2, cy - fh - 8, cx + fw + 2, cy + fh - 20], fill=hair + (255,))
    d.ellipse([cx - fw, cy - fh, cx + fw, cy + fh], fill=skin + (255,))
    # eyes
    for side in (-1, 1):
        ex, ey = cx + side * 15, cy - 8
        h = 5.5 * eye_open
        d.ellipse([ex - 7, ey - h, ex + 7, ey + h], fill=(245, 245, 245, 255), outline=dark + (255,))
        if h > 2:
            r = min(3.2, h)
            d.ellipse([ex - r, ey - r, ex + r, ey + r], fill=(30, 20, 15, 255))
    # brows: inner end at |x| = 6, outer end at |x| = 24
    for side in (-1, 1):
        base = cy - 20 - 6 * raise_
        inner = (cx + side * 5, base - 5 * tilt)
        outer = (cx + side * 24, base + 1.5 * tilt)
        d.line([inner, outer], fill=hair + (255,), width=4)
    # nose, with wrinkle lines for disgust-like asymmetry
    d.line([(cx, cy - 4), (cx - 3, cy + 8), (cx + 2, cy + 9)], fill=dark + (255,), width=2)
    if asym > 0.5:
        d.line([(cx - 8, cy - 2), (cx - 4, cy + 4)], fill=dark + (255,), width=1)
        d.line([(cx + 8, cy - 2), (cx + 4, cy + 4)], fill=dark + (255,), width=1)
    # mouth: upper lip y = my - 8·curve·t², opening 13·open·(1 − t²) below it
    my, half = cy + 22, 13 * max(width, 0.4)
    ts = np.linspace(-1, 1, 21)
    lift = 4 * asym * (ts > 0) * ts
    upper = [(cx + t * half, my - 8 * curve * t * t - l) for t, l in zip(ts, lift)]
    opening = 13 * max(mouth_open, 0.0)
    if opening > 1.5:
        lower = [(x, y + opening * (1 - t * t)) for (x, y), t in zip(upper, ts)]
        d.polygon(upper + lower[::-1], fill=(90, 20, 30, 255), outline=(150, 40, 50, 255))
    else:
        d.line(upper, fill=(150, 40, 50, 255), width=3)
    return layer


def _occlude(img: Image.Image, rng) -> None:
    d = ImageDraw.Draw(img)
    color = tuple(int(v) for v in rng.uniform(0, 255, 3))
    kind = rng.integers(3)
    if kind == 0:  # glasses-like bar over the eyes
        y = CANVAS / 2 - 8 + rng.normal(0, 2)
        d.rectangle([CANVAS / 2 - 30, y - 5, CANVAS / 2 + 30, y + 5], fill=color)
    else:          # a hand or object over a random part of the face
        x, y = rng.uniform(30, 98, 2)
        r = rng.uniform(10, 20)
        d.ellipse([x - r, y - r * 0.7, x + r, y + r * 0.7], fill=color)


def draw_face(label: int, rng: np.random.Generator, size: int = 64,
              occlusion_prob: float = 0.2, min_intensity: float = MIN_INTENSITY,
              param_noise_scale: float = PARAM_NOISE_SCALE) -> Image.Image:
    """One RGB face of expression `label` (canonical 0..6), `size` x `size` pixels."""
    layer = _draw_face(expression_params(label, rng, min_intensity, param_noise_scale), rng)
    scale = rng.uniform(0.8, 1.1)
    layer = layer.rotate(rng.uniform(-15, 15), resample=Image.BILINEAR,
                         translate=tuple(rng.normal(0, 4, 2)))
    side = int(CANVAS * scale)
    layer = layer.resize((side, side), Image.BILINEAR)
    img = _background(rng)
    offset = (CANVAS - side) // 2
    img.paste(layer, (offset, offset), layer)
    if rng.random() < occlusion_prob:
        _occlude(img, rng)
    # lighting: a directional gain and a global brightness change
    arr = np.asarray(img, np.float64)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:CANVAS, 0:CANVAS] / CANVAS - 0.5
    gain = rng.uniform(0.7, 1.25) * (1 + rng.uniform(0, 0.5) * (xx * math.cos(angle)
                                                                 + yy * math.sin(angle)))
    arr = arr * gain[..., None] + rng.normal(0, 4, arr.shape)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5)))
    return img.resize((size, size), Image.LANCZOS)


SPLIT_IDS = {"train": 0, "test": 1, "test_longtail": 2, "validation": 3}


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Deterministic, independent stream for one example."""
    return np.random.default_rng([seed, SPLIT_IDS[split], index])


def encoded_example(index_and_label: tuple[int, int], *, seed: int, split: str, size: int,
                    min_intensity: float, param_noise_scale: float, label_noise: float,
                    encoding: str = "png") -> tuple[bytes, int]:
    """One example of a split as (encoded image, label after noise), from its index and
    true label: the unit of work that builds run in parallel worker processes. The bytes
    are those the TFDS Image feature would write for the drawn face."""
    index, clean = index_and_label
    rng = example_rng(seed, split, index)
    face = draw_face(clean, rng, size, min_intensity=min_intensity,
                     param_noise_scale=param_noise_scale)
    label = noisy_label(clean, rng, label_noise)
    buffer = io.BytesIO()
    face.save(buffer, format=encoding)
    return buffer.getvalue(), label


def split_labels(split: str, *, train_size: int, test_per_class: int, longtail_test_size: int,
                 imbalance_ratio: float, seed: int, validation_per_class: int = 0) -> np.ndarray:
    """True (pre-noise) labels of a split, in a seeded shuffled order.

    'train' and 'test_longtail' (`longtail_test_size` images, like RAF-DB's test set) follow
    the long tail; 'test' (`test_per_class` per class) and 'validation'
    (`validation_per_class`) are class-balanced.
    """
    if split == "train":
        counts = long_tail_counts(train_size, imbalance_ratio)
    elif split == "test_longtail":
        counts = long_tail_counts(longtail_test_size, imbalance_ratio)
    elif split == "validation":
        counts = np.full(7, validation_per_class)
    else:
        counts = np.full(7, test_per_class)
    labels = np.repeat(np.arange(7), counts)
    return np.random.default_rng([seed, 99, SPLIT_IDS[split]]).permutation(labels)


def example_grid(per_class: int = 8, size: int = 64, seed: int = 0) -> Image.Image:
    """A picture of `per_class` faces per expression, one row per class (canonical order)."""
    rows = [np.concatenate([np.asarray(draw_face(c, example_rng(seed, "test", 1000 * c + i),
                                                 size)) for i in range(per_class)], axis=1)
            for c in range(7)]
    return Image.fromarray(np.concatenate(rows, axis=0))


if __name__ == "__main__":
    import sys
    out = sys.argv[1] if len(sys.argv) > 1 else "docs/synthetic_fer.png"
    example_grid().save(out)
    print(f"wrote {out}")
