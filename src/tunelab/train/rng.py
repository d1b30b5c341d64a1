"""Every random-number generator a training step can draw from, captured and restored without pickle.

Exact resume needs the generators exactly where the interrupted run left them: Python's `random`, NumPy's
global generator, torch's CPU generator (dropout on the CPU) and each CUDA device's generator (dropout on a
GPU). Tensors go to a safetensors file and the rest to JSON, so a checkpoint never holds pickle (which can
run code when loaded: tunelab.run.weights).

The data loader's own shuffling is not here: batch order is a pure function of (seed, epoch)
(tunelab.train.sampling) and the training loader gets a private torch generator, so creating an iterator
does not draw from the global one (tunelab.train.loop.training_setup).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def capture() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, json) describing every global generator's state now."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    tensors = {"torch_cpu": torch.get_rng_state(), "numpy_keys": torch.from_numpy(np_keys.astype(np.int64))}
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    tensors.update({f"cuda_{i}": s for i, s in enumerate(cuda)})
    version, py_state, py_gauss = random.getstate()
    data = {"python": [version, list(py_state), py_gauss], "numpy": [np_kind, int(np_pos), int(np_has_gauss),
                                                                    float(np_gauss)], "cuda_devices": len(cuda)}
    return tensors, data


def restore(tensors: dict[str, torch.Tensor], data: dict[str, Any]) -> None:
    """Put every generator back where `capture` found it. A checkpoint from a machine with a different number
    of CUDA devices cannot be resumed exactly, so that is an error rather than a silent approximation."""
    version, py_state, py_gauss = data["python"]
    random.setstate((version, tuple(py_state), py_gauss))
    np_kind, np_pos, np_has_gauss, np_gauss = data["numpy"]
    np.random.set_state((np_kind, tensors["numpy_keys"].numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(tensors["torch_cpu"])
    saved = int(data.get("cuda_devices", 0))
    if saved:
        here = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if here != saved:
            raise RuntimeError(f"the checkpoint was written with {saved} CUDA device(s) and this machine has {here}; "
                               "an exact resume needs the same devices")
        torch.cuda.set_rng_state_all([tensors[f"cuda_{i}"] for i in range(saved)])
