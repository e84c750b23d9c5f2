"""fusedkd: fused knowledge-distillation losses as PyTorch custom ops.

Importing this package loads the op library (libfusedkd_torch.so) into ``torch.ops.fusedkd``.
The library is looked up, in order, at ``$FUSEDKD_TORCH_LIBRARY``, next to this package (a pip
install), in the repository's ``build/torch_ext/`` (a developer's checkout with
``PYTHONPATH=python``), and in an installed prefix's ``lib/``.
"""
from __future__ import annotations

import os
import re
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


def _version() -> str:
    try:  # a pip install: generated from CMakeLists.txt's project() line at build time
        from ._version import __version__ as version

        return version
    except ImportError:  # a checkout: read that line
        cmake = Path(__file__).resolve().parent.parent.parent / "CMakeLists.txt"
        match = re.search(r"project\(fusedkd VERSION ([0-9][0-9.]*)", cmake.read_text()) if cmake.is_file() else None
        return match.group(1) if match else "unknown"


library_path = _load()
__version__ = _version()


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


@torch.compiler.disable
def release_cpu_output_cache() -> int:
    """Frees the large CPU output blocks fusedkd keeps for reuse; returns their bytes.

    A CPU output of 2 MiB or more (a gradient of large logits, say) is kept when it is freed, so
    that the next output of the same size reuses its memory instead of faulting in fresh pages:
    up to ``FUSEDKD_CPU_OUTPUT_CACHE_MB`` MiB (1024 by default, 0 keeps none; read once per
    process). Call this to give that memory back, as ``torch.cuda.empty_cache`` does on a GPU.
    """
    return torch.ops.fusedkd.release_cpu_output_cache()


__all__ = [*functional.__all__, "functional", "nn", "release_cpu_output_cache", "library_path", "__version__"]
