"""Export a trained model's weights in the torchvision key layout, for PyTorch and others.

    python -m ferjax.export --workdir runs/rafdb_mek --checkpoint best rafdb_mek.safetensors

Writes `.safetensors` or `.npz` with the keys and tensor layouts of torchvision (conv
weights O x I x kh x kw, linear weights out x in, BatchNorm running_mean / running_var), as
`ferjax.models.pretrained` reads them: `torch_model.load_state_dict({k: torch.from_numpy(v)
...})` on the same architecture gives the same logits (tested against the PyTorch
ResNet-18 in benchmarks/torch_reference.py). The class order is printed and stored in the
file's metadata (safetensors) or under `__classes__` (npz).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from ferjax import console


def export_workdir(workdir: str, path: str, which: str = "best") -> dict:
    """Writes the weights of `which` checkpoint of `workdir` to `path`; returns what was
    written: {'path', 'step', 'tensors', 'classes'}."""
    from ferjax.models.pretrained import export_state_dict
    from ferjax.workdir import restore_model

    ext = os.path.splitext(path)[1].lower()
    if ext not in (".safetensors", ".npz"):
        raise ValueError(f"{path}: choose a .safetensors or .npz file name")
    _, model, names, step = restore_model(workdir, which)
    tensors = export_state_dict(model)
    tmp = path + ".tmp" + ext
    if ext == ".safetensors":
        from safetensors.numpy import save_file
        save_file(tensors, tmp, metadata={"classes": json.dumps(names), "step": str(step)})
    else:
        np.savez(tmp, __classes__=np.array(names), **tensors)
    os.replace(tmp, path)
    return {"path": path, "step": step, "tensors": len(tensors), "classes": names}


def main(argv=None) -> int:
    parser = console.command_parser("ferjax.export", __doc__)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--checkpoint", default="best", help="'best', 'latest' or a step")
    parser.add_argument("output", help="OUT.safetensors or OUT.npz")
    args = parser.parse_args(argv)
    try:
        done = export_workdir(args.workdir, args.output, args.checkpoint)
    except (FileNotFoundError, ValueError) as e:
        console.print_error(e)
        return 1
    print(f"wrote {done['tensors']} tensors of step {done['step']} to {done['path']}; "
          f"class order: {', '.join(done['classes'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
