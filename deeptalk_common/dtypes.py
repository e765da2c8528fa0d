"""The one table of dtype names that model args and command lines accept."""
from __future__ import annotations

import torch

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str, what: str = "dtype") -> torch.dtype:
    """The torch dtype called `name`; a ValueError naming `what` and the choices otherwise."""
    if name not in TORCH_DTYPES:
        raise ValueError(f"{what}={name!r}: use one of {sorted(TORCH_DTYPES)}")
    return TORCH_DTYPES[name]
