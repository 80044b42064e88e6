"""Relative Uncertainty Learning (Zhang et al., NeurIPS 2021): mixing and the add-up loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ferjax.losses.classification import weighted_cross_entropy


def relative_uncertainty_mix(mu: jax.Array, uncertainty: jax.Array,
                             perm: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mixes each sample's feature with its partner's by relative uncertainty.

    λ_i = u_i / (u_i + u_π(i)) and m_i = λ_i·μ_i + (1 − λ_i)·μ_π(i): the more uncertain
    sample of a pair gets the larger share. One gather, no loop over samples; gradients
    flow through μ and u of both partners.

    Args:
      mu: (N, D) features.
      uncertainty: (N,) positive uncertainties u.
      perm: (N,) int permutation π of the batch (a sample may be its own partner).
    Returns:
      (mixed (N, D), lam (N,)).
    """
    lam = uncertainty / (uncertainty + uncertainty[perm])
    mixed = lam[:, None] * mu + (1.0 - lam)[:, None] * mu[perm]
    return mixed, lam


def rul_add_up_loss(logits: jax.Array, labels: jax.Array, perm: jax.Array,
                    class_weights: jax.Array | None = None,
                    reduction: str = "torch_weighted_mean",
                    mask: jax.Array | None = None) -> jax.Array:
    """The add-up loss ½·CE(z, y) + ½·CE(z, y_π) over mixed-feature logits.

    Both labels carry a fixed ½ (not λ). With `class_weights` each half is a
    class-weighted cross-entropy with the given `reduction` (see
    `weighted_cross_entropy`); without, both halves are plain means.

    Args:
      logits: (N, K) logits of the mixed features.
      labels: (N,) int labels y.
      perm: (N,) the permutation used for mixing.
      class_weights: optional (K,) per-class weights w.
      reduction: 'mean' or 'torch_weighted_mean'.
      mask: optional (N,) validity mask (0 for padding rows).
    Returns:
      scalar loss.
    """
    # A mixed row is only valid when both partners are real examples.
    pair_mask = None if mask is None else mask * mask[perm]
    loss_own = weighted_cross_entropy(logits, labels, class_weights, reduction, pair_mask)
    loss_partner = weighted_cross_entropy(logits, labels[perm], class_weights, reduction,
                                          pair_mask)
    return 0.5 * (loss_own + loss_partner)


def sample_permutation(key: jax.Array, batch_size: int, group_size: int = 0) -> jax.Array:
    """A uniformly random pairing π of the batch (torch.randperm equivalent).

    With `group_size` > 0 the batch is cut into consecutive groups of that many samples and
    each group is permuted on its own, so partners never cross a group: the pairing of
    data-parallel PyTorch code, where each GPU permutes its own batch (spec §7.3).
    `group_size` 0 or `batch_size` permutes the whole batch.

    Returns:
      (batch_size,) int32 permutation.
    """
    if group_size <= 0 or group_size == batch_size:
        return jax.random.permutation(key, jnp.arange(batch_size))
    if batch_size % group_size:
        raise ValueError(f"batch of {batch_size} does not split into mix groups of "
                         f"{group_size} (config.loss.mix_group_size)")
    groups = batch_size // group_size
    keys = jax.random.split(key, groups)
    local = jax.vmap(lambda k: jax.random.permutation(k, jnp.arange(group_size)))(keys)
    return (local + group_size * jnp.arange(groups)[:, None]).reshape(batch_size)
