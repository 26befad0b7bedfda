"""kernels/partials.py under the Triton interpreter: merged (max, sum-exp) pairs against float64, over one
step and several ragged steps of partials, empty partials and columns with no finite max."""
from __future__ import annotations

import pytest
import torch
import triton

from gedi_fast.kernels import sinkhorn

pytestmark = pytest.mark.interpreter


def merged_float64(part_m: torch.Tensor, part_l: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    m = part_m.double().amax(0)
    shift = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    return m, (part_l.double() * torch.exp(part_m.double() - shift)).sum(0)


@pytest.mark.parametrize("n_parts", [1, 63, 64, 130])
@pytest.mark.parametrize("n_cols", [1, 37])
def test_merge_matches_float64(gen, n_parts, n_cols):
    part_m = torch.randn(n_parts, n_cols, generator=gen) * 30
    part_l = torch.rand(n_parts, n_cols, generator=gen) * 5 + 0.5
    part_m[::3, 0], part_l[::3, 0] = float("-inf"), 0.0  # empty partials (a group with no rows)
    if n_cols > 1:
        part_m[:, 1], part_l[:, 1] = float("-inf"), 0.0  # a column no partial reached
        part_m[n_parts // 2, 2] = 1e4  # one partial far above the others
    m, l = torch.empty(n_cols), torch.empty(n_cols)
    cols = sinkhorn._COMBINE_COLS
    sinkhorn._combine_kernel[(triton.cdiv(n_cols, cols),)](
        part_m, part_l, m, l, n_parts, n_cols, BLOCK=cols, BLOCK_P=sinkhorn._COMBINE_PARTS)
    want_m, want_l = merged_float64(part_m, part_l)
    assert torch.equal(m.double(), want_m)
    torch.testing.assert_close(l.double(), want_l, rtol=1e-5, atol=0)
