"""A trained model over many rows: eval mode, a bounded number of rows per forward. Scoring (ood) and
drawing (plots) both run it, so it sits below both."""
from __future__ import annotations

import torch
from torch import nn

EVAL_ROWS = 1024  # rows per forward when scoring a split: bounds memory on 10k-image test sets


@torch.no_grad()
def batched_logits(model: nn.Module, x: torch.Tensor, device: torch.device, rows: int = EVAL_ROWS) -> torch.Tensor:
    """model(x) in eval mode, `rows` at a time on `device`; float32 logits on the CPU."""
    model.eval()
    return torch.cat([model(x[i:i + rows].to(device)).float().cpu() for i in range(0, len(x), rows)])
