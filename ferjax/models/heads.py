"""Classification heads on a backbone's last feature map (N, H, W, C).

Every head returns a dict with at least 'logits' (N, K) in float32:
  - LinearHead: GAP -> Dense; 'cam' (N, H, W, K) when asked (for EAC / RAC).
  - RULHead: RUL's mean and log-variance branches; given `mix_perm` it mixes features
    by relative uncertainty and adds 'uncertainty' (N,) and 'mix_lambda' (N,).
  - DualBranchHead: BBN / RLR-CNet conventional + re-balancing branches fused by α.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ferjax.losses.rul import relative_uncertainty_mix
from ferjax.models import layers


def class_activation_maps(features: jax.Array, kernel: jax.Array) -> jax.Array:
    """CAM M[n,h,w,k] = Σ_c F[n,h,w,c]·W[c,k], bias excluded.

    The classifier weight is a constant here (stop-gradient), as in EAC/MEK: the
    consistency loss only moves the features.

    Args:
      features: (N, H, W, C); kernel: (C, K) Dense kernel.
    Returns:
      (N, H, W, K) float32.
    """
    w = jax.lax.stop_gradient(kernel).astype(jnp.float32)
    return jnp.einsum("nhwc,ck->nhwk", features.astype(jnp.float32), w)


class LinearHead(nnx.Module):
    """GAP -> (dropout) -> Dense(C -> K); torchvision's `fc`."""

    def __init__(self, num_features: int, num_classes: int, *, dropout: float = 0.0,
                 dtype=None, rngs: nnx.Rngs):
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
        self.fc = layers.linear(num_features, num_classes, dtype=dtype, rngs=rngs)

    def __call__(self, features: jax.Array, *, return_cam: bool = False) -> dict:
        pooled = layers.global_avg_pool(features)
        if self.dropout is not None:
            pooled = self.dropout(pooled)
        out = {"logits": self.fc(pooled).astype(jnp.float32)}
        if return_cam:
            out["cam"] = class_activation_maps(features, self.fc.kernel[...])
        return out


def flatten(features: jax.Array) -> jax.Array:
    """(N, H, W, C) -> (N, H·W·C), in NHWC order (torch RUL flattens C, H, W)."""
    return features.reshape(features.shape[0], -1)


class RULHead(nnx.Module):
    """RUL head (spec §2.2): μ and log σ² branches of identical structure, then Dense(D -> K).

    u_i = mean_d exp(v_i,d). In training pass `mix_perm` (N,) to classify the
    uncertainty-mixed features; without it the head classifies μ (inference).
    The flattened size fixes the input resolution: `spatial` is H = W of the map.
    """

    def __init__(self, num_features: int, spatial: int, num_classes: int, *,
                 out_dim: int = 64, dropout: float = 0.4, dtype=None, rngs: nnx.Rngs):
        def branch():
            return nnx.Sequential(
                layers.batch_norm(num_features, epsilon=2e-5, affine=False, dtype=dtype,
                                  rngs=rngs),
                nnx.Dropout(dropout, rngs=rngs),
                flatten,
                layers.linear(spatial * spatial * num_features, out_dim, dtype=dtype,
                              rngs=rngs),
                layers.batch_norm(out_dim, epsilon=2e-5, dtype=dtype, rngs=rngs))

        self.spatial = spatial
        self.mu = branch()
        self.logvar = branch()
        self.fc = layers.linear(out_dim, num_classes, dtype=dtype, rngs=rngs)

    def __call__(self, features: jax.Array, *, mix_perm: jax.Array | None = None) -> dict:
        if features.shape[1:3] != (self.spatial, self.spatial):
            raise ValueError(f"RUL head was built for a {self.spatial}x{self.spatial} feature map "
                             f"but got {features.shape[1]}x{features.shape[2]}; set "
                             "data.image_size to the size the model was built with")
        mu = self.mu(features)
        if mix_perm is None:
            return {"logits": self.fc(mu).astype(jnp.float32)}
        uncertainty = jnp.mean(jnp.exp(self.logvar(features).astype(jnp.float32)), axis=-1)
        mixed, lam = relative_uncertainty_mix(mu.astype(jnp.float32), uncertainty, mix_perm)
        return {"logits": self.fc(mixed.astype(mu.dtype)).astype(jnp.float32),
                "uncertainty": uncertainty, "mix_lambda": lam}


class DualBranchHead(nnx.Module):
    """BBN bilateral head: two branch blocks on the shared trunk, fused by α.

    Training (`split_batch=True`): the input stacks the uniform batch and the
    reversed-sampler batch, (2N, H, W, C); the first half feeds the conventional
    branch, the second the re-balancing one, and z = Dense(2·[α f_c, (1−α) f_r]).
    Inference: both branches see the same batch with α = ½, i.e. Dense([f_c, f_r]).

    Args:
      branch_c, branch_r: the two copies of the last trunk block.
      attention_c: optional attention on the conventional branch only (SA in RLR-CNet).
      tail: optional block shared by both branches after them (conv5 in RLR-CNet).
      num_features: width of f_c and f_r.
    """

    def __init__(self, branch_c: nnx.Module, branch_r: nnx.Module, num_features: int,
                 num_classes: int, *, attention_c: nnx.Module | None = None,
                 tail: nnx.Module | None = None, dtype=None, rngs: nnx.Rngs):
        self.branch_c = branch_c
        self.branch_r = branch_r
        self.attention_c = attention_c
        self.tail = tail
        self.fc = layers.linear(2 * num_features, num_classes, dtype=dtype, rngs=rngs)

    def _branch(self, h: jax.Array, branch: nnx.Module, attention) -> jax.Array:
        h = branch(h)
        if attention is not None:
            h = attention(h)
        if self.tail is not None:
            h = self.tail(h)
        return layers.global_avg_pool(h)

    def __call__(self, features: jax.Array, *, alpha: float | jax.Array = 0.5,
                 split_batch: bool = False) -> dict:
        if split_batch:
            if features.shape[0] % 2:
                raise ValueError("split_batch needs the two batches stacked: an even batch")
            h_c, h_r = jnp.split(features, 2, axis=0)
        else:
            h_c = h_r = features
        f_c = self._branch(h_c, self.branch_c, self.attention_c)
        f_r = self._branch(h_r, self.branch_r, None)
        alpha = jnp.asarray(alpha, f_c.dtype)
        fused = 2.0 * jnp.concatenate([alpha * f_c, (1.0 - alpha) * f_r], axis=-1)
        return {"logits": self.fc(fused).astype(jnp.float32)}
