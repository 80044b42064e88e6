"""Losses as pure functions of arrays, and a registry so configs name them."""

from ferjax.losses.bbn import bbn_loss, cumulative_alpha
from ferjax.losses.classification import (class_weights, cross_entropy, label_smoothing_loss,
                                          masked_mean, smooth_labels, soft_cross_entropy,
                                          weighted_cross_entropy)
from ferjax.losses.consistency import (attention_consistency_loss, flip_back,
                                       rebalanced_attention_consistency_loss)
from ferjax.losses.rebalance import (rebalanced_smooth_labels_loss, rebalancing_weights,
                                     reversed_sampling_probabilities, rsl_target_table)
from ferjax.losses.rul import relative_uncertainty_mix, rul_add_up_loss, sample_permutation
from ferjax.registry import Registry

LOSSES: Registry = Registry("loss")
for _name, _fn in {
    "cross_entropy": weighted_cross_entropy,
    "label_smoothing": label_smoothing_loss,
    "rsl": rebalanced_smooth_labels_loss,
    "eac": attention_consistency_loss,
    "rac": rebalanced_attention_consistency_loss,
    "rul_add_up": rul_add_up_loss,
    "bbn": bbn_loss,
}.items():
    LOSSES.register(_name)(_fn)

__all__ = [
    "LOSSES", "attention_consistency_loss", "bbn_loss", "class_weights", "cross_entropy",
    "cumulative_alpha", "flip_back", "label_smoothing_loss", "masked_mean",
    "rebalanced_attention_consistency_loss", "rebalanced_smooth_labels_loss",
    "rebalancing_weights", "relative_uncertainty_mix", "reversed_sampling_probabilities",
    "rsl_target_table", "rul_add_up_loss", "sample_permutation", "smooth_labels",
    "soft_cross_entropy", "weighted_cross_entropy",
]
