"""MEK re-balancing (Zhang et al., NeurIPS 2023): weights, re-balanced smooth labels, sampler priors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ferjax.losses.classification import class_weights, masked_mean, soft_cross_entropy


def rebalancing_weights(counts) -> np.ndarray:
    """w_k = N / (10·n_k) from a (K,) label histogram (MEK's hard-coded RAF-DB values)."""
    return class_weights(counts, "mek_style")


def rsl_target_table(weights, epsilon: float) -> jax.Array:
    """The (K, K) re-balanced smooth-label table; row y is the target of a class-y sample.

    T[y, y] = 1 − ε and T[y, k] = ε · w_k / Σ_{j≠y} w_j for k ≠ y, so every row sums to 1.
    """
    w = jnp.asarray(weights, jnp.float32)
    k = w.shape[0]
    off_diag = 1.0 - jnp.eye(k)
    others = w[None, :] * off_diag  # (K, K): w_k on the off-diagonal of row y
    table = epsilon * others / jnp.sum(others, axis=1, keepdims=True)
    return table + (1.0 - epsilon) * jnp.eye(k)


def rebalanced_smooth_labels_loss(logits: jax.Array, labels: jax.Array, weights,
                                  epsilon: float = 0.3,
                                  mask: jax.Array | None = None) -> jax.Array:
    """RSL: cross-entropy against targets whose ε-mass follows the re-balancing weights.

    Args:
      logits: (N, K); labels: (N,) int; weights: (K,) re-balancing weights; mask: (N,) or None.
    Returns:
      scalar, mean_i Σ_k −T[y_i, k] · log_softmax(z_i)_k.
    """
    targets = rsl_target_table(weights, epsilon)[labels]
    return masked_mean(soft_cross_entropy(logits, targets), mask)


def reversed_sampling_probabilities(counts) -> np.ndarray:
    """BBN's reversed sampler: P(c) ∝ n_max / n_c, returned normalised (K,).

    A class with zero examples gets probability 0 (nothing to draw from).
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.max(initial=0) <= 0:
        raise ValueError("reversed sampler needs at least one class with examples")
    w = np.where(counts > 0, counts.max() / np.maximum(counts, 1), 0.0)
    return w / w.sum()
