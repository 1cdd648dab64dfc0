r"""Reference scattered linear attention: a Python loop over windows (slow, obviously correct).

For window :math:`w` with rows :math:`i \in w`, per head,

.. math::
    S_w = \sum_{j \in w} k_j^\top v_j,\quad z_w = \sum_{j \in w} k_j,\quad
    y_i = \frac{q_i S_w}{q_i \cdot z_w + \varepsilon}.

``q`` and ``k`` are already feature-mapped (non-negative). Half-precision inputs are computed in float32 and
the output is cast back. Autograd comes from the torch operations.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["sla_naive"]


def sla_naive(q: Tensor, k: Tensor, v: Tensor, offsets: Tensor, eps: float = 1e-6) -> Tensor:
    """``q, k, v [N, H, D]`` sorted by window, CSR ``offsets [W + 1]`` -> ``y [N, H, D]``."""
    compute_dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    outputs = []
    bounds = offsets.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        qw = q[start:end].to(compute_dtype)
        kw = k[start:end].to(compute_dtype)
        vw = v[start:end].to(compute_dtype)
        state = torch.einsum("nhd,nhe->hde", kw, vw)
        normaliser = kw.sum(dim=0)
        numerator = torch.einsum("nhd,hde->nhe", qw, state)
        denominator = torch.einsum("nhd,hd->nh", qw, normaliser)
        outputs.append(numerator / (denominator.unsqueeze(-1) + eps))
    if not outputs:
        return (q + k + v) * 0  # empty: zeros that keep the graph
    return torch.cat(outputs, dim=0).to(q.dtype)
