"""ferjax: facial expression recognition on imbalanced, noisy data, in JAX/Flax NNX."""

from ferjax import malloc_tuning as _malloc_tuning
from ferjax import xla_tuning as _xla_tuning

# The mallopt settings in force (empty when off), for benchmark records.
malloc_settings = _malloc_tuning.apply()
_xla_tuning.apply()
