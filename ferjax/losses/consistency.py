"""Attention consistency under horizontal flip: EAC (plain) and MEK's RAC (re-balanced).

CAMs are (N, H, W, K) maps (see `ferjax.models.heads.class_activation_maps`). The map of
the mirrored image is flipped back along W before comparing; on the integer grid this is
exactly the grid_sample flip of the reference code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ferjax.losses.classification import masked_mean


def flip_back(cam_of_flipped: jax.Array) -> jax.Array:
    """Mirror a (N, H, W, K) map along the width axis."""
    return cam_of_flipped[:, :, ::-1, :]


def attention_consistency_loss(cam: jax.Array, cam_flipped: jax.Array,
                               mask: jax.Array | None = None) -> jax.Array:
    """EAC: mean over N·H·W·K of (M − flip(M̃))².

    Args:
      cam: (N, H, W, K) CAM of the image; cam_flipped: (N, H, W, K) CAM of its mirror.
      mask: optional (N,) validity mask.
    Returns:
      scalar.
    """
    sq = jnp.square(cam.astype(jnp.float32) - flip_back(cam_flipped).astype(jnp.float32))
    return masked_mean(jnp.mean(sq, axis=(1, 2, 3)), mask)


def rebalanced_attention_consistency_loss(cam: jax.Array, cam_flipped: jax.Array, weights,
                                          mask: jax.Array | None = None) -> jax.Array:
    """RAC: mean_i Σ_k w_k · mean_{h,w} (M − flip(M̃))²_{i,h,w,k} (a weighted sum over classes).

    Args:
      cam, cam_flipped: (N, H, W, K); weights: (K,) re-balancing weights; mask: (N,) or None.
    Returns:
      scalar.
    """
    sq = jnp.square(cam.astype(jnp.float32) - flip_back(cam_flipped).astype(jnp.float32))
    per_class = jnp.mean(sq, axis=(1, 2))  # (N, K)
    return masked_mean(per_class @ jnp.asarray(weights, jnp.float32), mask)
