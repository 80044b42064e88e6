"""ferjax: facial expression recognition on imbalanced, noisy data, in JAX/Flax NNX."""

from ferjax import xla_tuning as _xla_tuning

_xla_tuning.apply()
