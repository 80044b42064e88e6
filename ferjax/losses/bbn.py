"""BBN cumulative learning (Zhou et al., CVPR 2020), used by RLR-CNet's dual branch."""

from __future__ import annotations

import jax

from ferjax.losses.classification import masked_mean, cross_entropy

ALPHA_RULES = ("paper", "official")


def cumulative_alpha(epoch: int, total_epochs: int, rule: str = "paper") -> float:
    """α(T) = 1 − ((T − 1) / T_div)² for epochs T = 1..T_max, constant within an epoch.

    rule='paper': T_div = T_max. rule='official': as BBN's combiner, T_div is 100 or 200
    when T_max is 90 or 180 (so α stays > 0 at the end), else T_max.
    """
    if rule not in ALPHA_RULES:
        raise ValueError(f"bbn alpha rule {rule!r}; expected one of {ALPHA_RULES}")
    if total_epochs < 1 or not 1 <= epoch <= total_epochs:
        raise ValueError(f"epoch {epoch} outside 1..{total_epochs}")
    divisor = total_epochs
    if rule == "official" and total_epochs in (90, 180):
        divisor = 100 * (total_epochs // 100 + 1)
    return 1.0 - ((epoch - 1) / divisor) ** 2


def bbn_loss(logits: jax.Array, labels_conventional: jax.Array, labels_reversed: jax.Array,
             alpha: float | jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """L = α·CE(z, y_c) + (1 − α)·CE(z, y_r) on the fused logits z.

    Args:
      logits: (N, K) fused dual-branch logits; labels_*: (N,) int; alpha: scalar in [0, 1].
    """
    return (alpha * masked_mean(cross_entropy(logits, labels_conventional), mask)
            + (1.0 - alpha) * masked_mean(cross_entropy(logits, labels_reversed), mask))
