"""Cross-entropy family: per-class weights, label smoothing, and the class-weight formulas.

All loss functions are pure functions of arrays. `mask` (N,) marks real rows (1) versus
padding (0); a masked mean divides by the number of real rows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

CLASS_WEIGHT_SCHEMES = ("inv_norm_K", "max_ratio", "mek_style", "effective_num", "sqrt_inv",
                        "none")
REDUCTIONS = ("mean", "torch_weighted_mean")


def masked_mean(values: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Mean of (N,) `values` over rows where `mask` is 1 (all rows if mask is None)."""
    if mask is None:
        return jnp.mean(values)
    mask = mask.astype(values.dtype)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-sample −Σ_k t_k · log_softmax(z)_k. logits, targets: (N, K) -> (N,)."""
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.sum(targets * log_p, axis=-1)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-sample cross-entropy with integer labels. logits (N, K), labels (N,) -> (N,)."""
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(log_p, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]


def weighted_cross_entropy(logits: jax.Array, labels: jax.Array,
                           class_weights: jax.Array | None = None,
                           reduction: str = "torch_weighted_mean",
                           mask: jax.Array | None = None) -> jax.Array:
    """Cross-entropy with per-class weights w (spec §2.3 and §7.2).

    'torch_weighted_mean': Σ_i w_{y_i} CE_i / Σ_i w_{y_i} (what torch's `weight=` does);
    'mean': (1/N) Σ_i w_{y_i} CE_i. Without weights both are the plain mean.

    Args:
      logits: (N, K); labels: (N,) int; class_weights: (K,) or None; mask: (N,) or None.
    Returns:
      scalar loss.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"loss reduction {reduction!r}; expected one of {REDUCTIONS}")
    ce = cross_entropy(logits, labels)
    if class_weights is None:
        return masked_mean(ce, mask)
    w = jnp.asarray(class_weights, jnp.float32)[labels]
    if mask is not None:
        w = w * mask.astype(w.dtype)
    if reduction == "mean":
        n = ce.shape[0] if mask is None else jnp.maximum(jnp.sum(mask), 1.0)
        return jnp.sum(w * ce) / n
    return jnp.sum(w * ce) / jnp.maximum(jnp.sum(w), 1e-12)


def smooth_labels(labels: jax.Array, num_classes: int, epsilon: float,
                  spread: str = "others") -> jax.Array:
    """Label-smoothed targets (N, K).

    spread='others': 1 − ε on the label and ε/(K−1) on each other class (the uniform
    case of RSL). spread='all': (1 − ε)·onehot + ε/K (the common torch/optax form).
    """
    onehot = jax.nn.one_hot(labels, num_classes)
    if spread == "others":
        return onehot * (1.0 - epsilon) + (1.0 - onehot) * (epsilon / (num_classes - 1))
    if spread == "all":
        return onehot * (1.0 - epsilon) + epsilon / num_classes
    raise ValueError(f"label smoothing spread {spread!r}; expected 'others' or 'all'")


def label_smoothing_loss(logits: jax.Array, labels: jax.Array, epsilon: float = 0.1,
                         spread: str = "others", mask: jax.Array | None = None) -> jax.Array:
    """Cross-entropy against uniformly smoothed labels. logits (N, K), labels (N,) -> scalar."""
    targets = smooth_labels(labels, logits.shape[-1], epsilon, spread)
    return masked_mean(soft_cross_entropy(logits, targets), mask)


def class_weights(counts, scheme: str = "inv_norm_K", beta: float = 0.9999) -> np.ndarray:
    """Per-class loss weights from training counts n_c (spec §2.3).

    inv_norm_K: N/(K·n_c); max_ratio: n_max/n_c; mek_style: N/(10·n_c);
    effective_num: (1−β)/(1−β^{n_c}) and sqrt_inv: n_c^{−1/2}, both scaled to mean 1;
    none: all ones.

    Args:
      counts: (K,) non-negative class counts.
    Returns:
      (K,) float32 weights.
    Raises:
      ValueError: for an unknown scheme, or a class with no examples (its inverse-frequency
        weight would be infinite) unless scheme='none'.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"class counts must be a non-empty 1-D array, got shape {counts.shape}")
    if scheme not in CLASS_WEIGHT_SCHEMES:
        raise ValueError(f"class weight scheme {scheme!r}; expected one of {CLASS_WEIGHT_SCHEMES}")
    if scheme == "none":
        return np.ones(counts.shape, np.float32)
    if np.any(counts <= 0):
        empty = np.flatnonzero(counts <= 0).tolist()
        raise ValueError(f"classes {empty} have no training examples; scheme {scheme!r} "
                         "needs every class present (drop the class or use scheme 'none')")
    total, k = counts.sum(), counts.size
    if scheme == "inv_norm_K":
        w = total / (k * counts)
    elif scheme == "max_ratio":
        w = counts.max() / counts
    elif scheme == "mek_style":
        w = total / (10.0 * counts)
    elif scheme == "effective_num":
        w = (1.0 - beta) / (1.0 - np.power(beta, counts))
        w = w / w.mean()
    else:  # sqrt_inv
        w = counts ** -0.5
        w = w / w.mean()
    return w.astype(np.float32)
