"""Import PyTorch weights in the torchvision key layout into ferjax models.

Our modules use torchvision's attribute names, so a torch key such as
`layer2.0.downsample.1.running_var` names the NNX variable
`trunk.layer2[0].downsample.layers[1].var`. Conversion rules:
  conv weight (O, I/g, kh, kw) -> kernel (kh, kw, I/g, O); linear weight (O, I) -> kernel (I, O);
  BN/GN weight -> scale, running_mean -> mean, running_var -> var; num_batches_tracked and
  Swin's relative_position_index / attn_mask (derived from the architecture) ignored.
Swin (`swin_t`) keys are the Swin reference code's (`layers.0.blocks.1.attn.qkv.weight`);
MEK's released models (`SwinTransFER`: `encoder.layers...`, `norm`, `head`) are recognised
and read in that layout (`from_swin_transfer`).

Files: `.npz` and `.safetensors` load without torch; `.pth`/`.pt` need torch and are read with
`weights_only=True` (no code is unpickled). Convert once with

    python -m ferjax.models.pretrained resnet18_msceleb.pth resnet18_msceleb.npz
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from typing import Iterable, Mapping

import numpy as np
from flax import nnx

_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
               "var": "running_var"}
# Counters and constants derived from the architecture, which ferjax computes itself.
_SKIPPED_TORCH_SUFFIXES = ("num_batches_tracked", "relative_position_index", "attn_mask")
# Leaves named as in torch: Shuffle Attention's gates and Swin's bias table, which is
# (offsets, heads) in both, not transposed like a linear weight.
_KEPT_LEAVES = ("cweight", "cbias", "sweight", "sbias", "relative_position_bias_table")
_UNTRANSPOSED = ("relative_position_bias_table",)


@dataclasses.dataclass
class ImportReport:
    """What an import did: keys loaded, missing from the file, unexpected in the file,
    skipped by `exclude`, and those whose shapes do not fit."""
    loaded: list[str]
    missing: list[str]
    unexpected: list[str]
    excluded: list[str]
    mismatched: list[str]
    layout: str = ""  # a note when the file's layout was converted (from_swin_transfer)

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors"] + ([self.layout] if self.layout else [])
        for name in ("missing", "unexpected", "mismatched", "excluded"):
            keys = getattr(self, name)
            if keys:
                shown = ", ".join(keys[:12]) + (" ..." if len(keys) > 12 else "")
                lines.append(f"{name} ({len(keys)}): {shown}")
        return "\n".join(lines)


def torch_key(path: tuple, sequentials: frozenset = frozenset()) -> str | None:
    """Torch state-dict key of an NNX variable path, or None if it has no torch twin.
    `sequentials` are the paths of the model's nnx.Sequential modules, whose inner `layers`
    list torch does not name (`downsample.layers.1` is torch's `downsample.1`)."""
    parts = [str(p) for i, p in enumerate(path) if p not in ("trunk", "head")
             and not (p == "layers" and path[:i] in sequentials)]
    if not parts or parts[-1] not in _LEAF_NAMES and parts[-1] not in _KEPT_LEAVES:
        return None
    parts[-1] = _LEAF_NAMES.get(parts[-1], parts[-1])
    return ".".join(parts)


def _to_nnx_layout(key: str, value: np.ndarray, target_shape: tuple) -> np.ndarray | None:
    """Converts torch tensor `key` to the NNX layout of `target_shape`; None if it cannot
    fit. Conv and linear weights are transposed, except Swin's bias table."""
    if key.endswith(_UNTRANSPOSED):
        pass
    elif value.ndim == 4 and len(target_shape) == 4:
        value = value.transpose(2, 3, 1, 0)
    elif value.ndim == 2 and len(target_shape) == 2:
        value = value.T
    elif value.size == int(np.prod(target_shape)) and value.ndim != len(target_shape):
        value = value.reshape(target_shape)  # e.g. SA gates stored as (1, c, 1, 1)
    return value if tuple(value.shape) == tuple(target_shape) else None


def model_variables(model: nnx.Module) -> dict[str, nnx.Variable]:
    """Torch key -> NNX variable for every parameter and batch statistic of `model`."""
    out = {}
    nodes = list(nnx.iter_graph(model))
    sequentials = frozenset(path for path, node in nodes if isinstance(node, nnx.Sequential))
    for path, node in nodes:
        if isinstance(node, (nnx.Param, nnx.BatchStat)):
            key = torch_key(path, sequentials)
            if key is not None:
                out[key] = node
    return out


# SwinTransFER's encoder parts that its forward never calls: the Swin's own final LayerNorm
# and its face-recognition head (MEK applies a fresh `norm` to the encoder's tokens).
_SWIN_TRANSFER_UNUSED = ("encoder.norm.", "encoder.feature.", "encoder.head.")


def from_swin_transfer(state_dict: Mapping[str, np.ndarray]
                       ) -> tuple[dict[str, np.ndarray], str] | None:
    """MEK's `SwinTransFER` state dict (its released RAF-DB model: `encoder.` + the Swin,
    `norm`, `head`) in the layout `swin_t` reads, with a note of what was done; None if
    `state_dict` is not one. `encoder.` is dropped from the trunk's keys, `head` becomes
    the linear head's `fc`, and the encoder's unused final LayerNorm and face head are left
    out."""
    if "head.weight" not in state_dict or not any(k.startswith("encoder.layers.")
                                                  for k in state_dict):
        return None
    out, unused = {}, 0
    for key, value in state_dict.items():
        if key.startswith(_SWIN_TRANSFER_UNUSED):
            unused += 1
        elif key.startswith("encoder."):
            out[key[len("encoder."):]] = value
        elif key.startswith("head."):
            out["fc." + key[len("head."):]] = value
        else:
            out[key] = value
    return out, (f"layout: MEK's SwinTransFER (encoder.* as the trunk, head.* as fc; "
                 f"{unused} tensors of the encoder's unused final norm and face head left out)")


def import_state_dict(model: nnx.Module, state_dict: Mapping[str, np.ndarray], *,
                      strict: bool = True, exclude: Iterable[str] = ()) -> ImportReport:
    """Copies a torchvision-layout state dict into `model` in place.

    Args:
      state_dict: torch key -> array (numpy or anything `np.asarray` takes).
      strict: raise if any model key is missing from the file or any file key is unexpected.
      exclude: regexes of torch keys to leave alone on both sides (e.g. r'^fc\\.' to keep a
        fresh 7-class classifier, r'cbam' for CBAM gates that ImageNet weights lack).
    Returns:
      an ImportReport.
    Raises:
      ValueError: on a shape mismatch, or in strict mode on missing / unexpected keys. The
        model is left untouched when it raises.
    """
    patterns = [re.compile(p) for p in exclude]
    state_dict = {k[len("module."):] if k.startswith("module.") else k: v
                  for k, v in state_dict.items()}
    converted = from_swin_transfer(state_dict)
    state_dict, layout = converted if converted else (state_dict, "")

    def is_excluded(key):
        return any(p.search(key) for p in patterns)

    variables = model_variables(model)
    updates, unexpected, excluded, mismatched = {}, [], [], []
    for key, value in state_dict.items():
        if key.endswith(_SKIPPED_TORCH_SUFFIXES):
            continue
        if is_excluded(key):
            excluded.append(key)
            continue
        if key not in variables:
            unexpected.append(key)
            continue
        target = variables[key]
        converted = _to_nnx_layout(key, np.asarray(value), target[...].shape)
        if converted is None:
            mismatched.append(f"{key} {tuple(np.shape(value))} vs {tuple(target[...].shape)}")
            continue
        updates[key] = converted
    missing = sorted(k for k in variables if k not in updates and not is_excluded(k)
                     and not any(m.startswith(k + " ") for m in mismatched))
    excluded = sorted(set(excluded) | {k for k in variables if is_excluded(k)})
    report = ImportReport(sorted(updates), missing, sorted(unexpected), excluded, mismatched,
                          layout)
    if mismatched or (strict and (missing or unexpected)):
        raise ValueError("pretrained weights do not fit the model (nothing was loaded):\n"
                         f"{report}\nUse strict=False to allow missing/unexpected keys, or "
                         "exclude=[regex] for parts that are meant to differ.")
    for key, value in updates.items():
        var = variables[key]
        var[...] = np.asarray(value, dtype=var[...].dtype)
    return report


def export_state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
    """The inverse of `import_state_dict`: the model's weights as a torchvision-layout dict."""
    out = {}
    for key, var in model_variables(model).items():
        value = np.asarray(var[...], dtype=np.float32)
        if key.endswith(_UNTRANSPOSED):
            pass
        elif value.ndim == 4:
            value = value.transpose(3, 2, 0, 1)
        elif value.ndim == 2:
            value = value.T
        out[key] = np.ascontiguousarray(value)
    return out


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """Reads a state dict from `.npz`, `.safetensors` or (with torch) `.pth`/`.pt`/`.bin`."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    if ext == ".safetensors":
        from safetensors.numpy import load_file
        return load_file(path)
    if ext in (".pth", ".pt", ".bin", ".ckpt"):
        try:
            import torch
        except ImportError:
            raise ImportError(f"reading {path} needs torch (pip install 'ferjax[torch]'), or "
                              "convert it to .npz on a machine that has torch") from None
        obj = torch.load(path, map_location="cpu", weights_only=True)
        for wrapper in ("state_dict", "model", "model_state_dict", "state_dict_model"):
            if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
                obj = obj[wrapper]
        return {k: v.detach().cpu().float().numpy() if v.is_floating_point() else v.numpy()
                for k, v in obj.items() if hasattr(v, "numpy")}
    raise ValueError(f"unsupported weights format {ext!r} for {path}; "
                     "use .npz, .safetensors or .pth")


def load_pretrained(model: nnx.Module, path: str, *, strict: bool = True,
                    exclude: Iterable[str] = ()) -> ImportReport:
    """`load_state_dict(path)` then `import_state_dict(model, ...)`."""
    return import_state_dict(model, load_state_dict(path), strict=strict, exclude=exclude)


def main(argv: list[str]) -> int:
    if len(argv) != 3 or not argv[2].endswith(".npz"):
        print("usage: python -m ferjax.models.pretrained IN.(pth|safetensors|npz) OUT.npz",
              file=sys.stderr)
        return 2
    tensors = load_state_dict(argv[1])
    np.savez(argv[2], **tensors)
    print(f"wrote {len(tensors)} tensors to {argv[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
