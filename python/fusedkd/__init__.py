"""fusedkd: fused knowledge-distillation losses as PyTorch custom ops.

Importing this package loads the op library (libfusedkd_torch.so) into ``torch.ops.fusedkd``.
The library is looked up, in order, at ``$FUSEDKD_TORCH_LIBRARY``, next to this package, in the
repository's ``build/torch_ext/``, and in an installed prefix's ``lib/``.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

_LIBRARY_NAME = "libfusedkd_torch.so"


def _candidates():
    env = os.environ.get("FUSEDKD_TORCH_LIBRARY")
    if env:
        yield Path(env)
    here = Path(__file__).resolve().parent
    yield here / _LIBRARY_NAME
    yield here.parent.parent / "build" / "torch_ext" / _LIBRARY_NAME
    yield here.parent.parent.parent / "lib" / _LIBRARY_NAME


def _load() -> Path:
    tried = []
    for path in _candidates():
        tried.append(str(path))
        if path.is_file():
            torch.ops.load_library(str(path))
            return path
    raise ImportError(
        "fusedkd: cannot find " + _LIBRARY_NAME + " (build it with scripts/build.sh, or set "
        "FUSEDKD_TORCH_LIBRARY); looked at: " + ", ".join(tried)
    )


library_path = _load()


# The functional API and the loss modules (they call torch.ops.fusedkd, loaded above).
from .functional import (  # noqa: E402
    attention_transfer,
    feature_mse,
    jsd,
    kd_loss,
    kl_div,
    log_softmax_t,
    projected_feature_mse,
    similarity_preserving,
    soft_mse,
    softmax_t,
)
from . import functional, nn  # noqa: E402

__all__ = [*functional.__all__, "functional", "nn", "library_path"]
