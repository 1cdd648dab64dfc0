r"""Local-augmentation backbones (LAGNN, Liu et al., ICML 2022): LA-GCN, LA-GAT, LA-SAGE, LA-GCNII.

Every model takes the real features :math:`X` and ``G = num_generated`` generated matrices
:math:`\hat X_1..\hat X_G` (from :class:`geoattn.nn.LocalAugmenter`) through a first layer with one
branch per input whose outputs are concatenated ("concatenation style", paper Eq. 6):

.. math:: H^{(1)} = \sigma(\mathrm{conv}_0(X)) \,\Vert\, \sigma(\mathrm{conv}_1(\hat X_1)) \,\Vert \ldots

and the rest of the backbone is unchanged. With ``num_generated=0`` each model is its plain backbone
(GCN, GAT, GraphSAGE, GCNII), so baselines and LA models run through the same code.
:class:`LocalAugmentationWrapper` adds the input-level styles (average, concatenation) to any PyG model.

All models return logits ``[N, out_channels]``.
"""
from __future__ import annotations

import functools
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GATConv, GCN2Conv, GCNConv, SAGEConv
from torch_geometric.nn.dense.linear import Linear

from geoattn.nn.local_augmentation import BranchConcat, combine_augmented

__all__ = ["LAGCN", "LAGAT", "LASAGE", "LAGCNII", "LocalAugmentationWrapper", "InputLinear", "input_dropout"]


def _generated_list(x: Tensor, x_generated, num_generated: int) -> list[Tensor]:
    """Normalise ``x_generated`` (None, [N, F], [G, N, F] or a sequence) to a list of G matrices."""
    if num_generated == 0:
        if x_generated is not None and not (isinstance(x_generated, (list, tuple)) and len(x_generated) == 0):
            raise ValueError("x_generated: the model was built with num_generated=0, got generated features")
        return []
    if x_generated is None:
        raise ValueError(f"x_generated: expected {num_generated} generated feature matrices [N, F], got None")
    if isinstance(x_generated, Tensor):
        generated = [x_generated] if x_generated.dim() == 2 else list(x_generated.unbind(0))
    else:
        generated = list(x_generated)
    if len(generated) != num_generated:
        raise ValueError(f"x_generated: expected {num_generated} generated feature matrices, got {len(generated)}")
    for index, x_hat in enumerate(generated):
        if x_hat.shape != x.shape:
            raise ValueError(f"x_generated[{index}]: expected shape {tuple(x.shape)} like x, got {tuple(x_hat.shape)}")
    return generated


_SAME_WIDTH_INT = {8: torch.int64, 4: torch.int32, 2: torch.int16}


def input_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Dropout for wide input features, dense or sparse (COO or CSR).

    Sparse inputs (e.g. bag-of-words) keep their layout and only their stored values are dropped, so
    the cost follows the number of non-zeros; ``GCNConv``/``GATConv`` accept the result directly (the LA
    backbones' first layers take CSR, whose product is the cheapest on CPU). Dense inputs (e.g. generated
    features, dropped several times per step) draw 16 random bits per entry, four entries per 64-bit
    random number, which is ~4x cheaper on CPU than a float per entry: an entry is kept when its bits are
    at least ``round(p * 2^16)``, so the drop probability is ``p`` to within ``2^-17`` (exact for multiples
    of ``2^-16``), and survivors are scaled by the inverse of the exact keep probability, which keeps the
    expectation exact. When ``p`` is a multiple of ``2^-8`` (0.5, 0.25, ...) 8 bits per entry suffice and
    the drop probability is exactly ``p``. bfloat16 inputs (generated features stored in bfloat16) cost
    about half as much as float32 ones.
    """
    if not training or p == 0.0:
        return x
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p: expected a dropout probability in [0, 1], got {p}")
    if x.layout == torch.sparse_csr:
        values = x.values()
        keep = torch.rand_like(values) >= p  # CSR values are in row-major order, as coalesced COO ones
        return torch.sparse_csr_tensor(x.crow_indices(), x.col_indices(), values * keep / (1.0 - p), x.shape,
                                       check_invariants=False)
    if x.is_sparse:
        x = x.coalesce()
        values = x.values()
        keep = torch.rand_like(values) >= p
        return torch.sparse_coo_tensor(x.indices(), values * keep / (1.0 - p), x.shape, is_coalesced=True,
                                       check_invariants=False)
    if p == 1.0:
        return torch.zeros_like(x)
    # 8 random bits per entry when p is a multiple of 1/256 (0.5, 0.25...: exact and half the random
    # numbers), 16 otherwise
    entry_bits = 8 if (p * 256).is_integer() else 16
    levels = 2 ** entry_bits
    dropped = round(p * levels)
    if dropped == levels:
        return torch.zeros_like(x)
    per_word = 64 // entry_bits
    bits = torch.randint(-2**63, 2**63 - 1, ((x.numel() + per_word - 1) // per_word,), dtype=torch.int64,
                         device=x.device)
    entries = bits.view(torch.int8 if entry_bits == 8 else torch.int16)[:x.numel()].view(x.shape)
    threshold = dropped - levels // 2  # an entry is kept when its (signed) bits are >= threshold
    scale = levels / (levels - dropped)
    same_width_int = _SAME_WIDTH_INT.get(x.element_size())
    if x.requires_grad or same_width_int is None:
        return (x * (entries >= threshold)).mul_(scale)
    # Without autograd the mask is applied as a bitwise AND of the entries' bit patterns with all-ones
    # (kept) or zero (dropped) words, cheaper on CPU than multiplying by a boolean mask. The words come
    # from integer arithmetic: (entries - threshold) >> (width - 1) is -1 exactly where an entry is
    # dropped, and its complement is the mask; converting a boolean mask to integer words costs more than
    # all the rest of the call. Dropped entries become +0.0 (also where x is inf or NaN).
    word_bits = 8 * x.element_size()
    if entry_bits == 16 and word_bits == 16:  # entries - threshold could overflow 16 bits: compare instead
        words = (entries >= threshold).view(torch.uint8).to(same_width_int).neg_()
    else:  # |entries - threshold| < 2^entry_bits fits the (wider or equal) word without overflow
        words = entries.to(same_width_int).sub_(threshold).bitwise_right_shift_(word_bits - 1).bitwise_not_()
    return torch.bitwise_and(x.view(same_width_int), words, out=words).view(x.dtype).mul_(scale)


class _CSRTransposer:
    """``x.T`` as CSR for CSR matrices that share one sparsity pattern (a bag-of-words input whose values
    are re-dropped every pass): the pattern's transpose and the value permutation are computed once and
    reused while the pattern stays equal (checked with ``torch.equal``, a few microseconds), so each
    transpose is a gather of the values. Converting ``x.t()`` generically sorts the entries every time,
    which cost more than the rest of the first layer's backward pass on Cora."""

    def __init__(self):
        self.crow = self.col = None

    def __call__(self, x: Tensor) -> Tensor:
        crow, col = x.crow_indices(), x.col_indices()
        if not (self.crow is not None and self.crow.shape == crow.shape and self.col.shape == col.shape
                and self.num_columns == x.size(1) and torch.equal(self.crow, crow) and torch.equal(self.col, col)):
            rows = torch.repeat_interleave(torch.arange(x.size(0), device=x.device), crow.diff())
            self.order = torch.argsort(col * x.size(0) + rows, stable=True)
            self.t_col = rows[self.order]
            counts = torch.bincount(col, minlength=x.size(1))
            self.t_crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)]).to(crow.dtype)
            self.crow, self.col, self.num_columns = crow.clone(), col.clone(), x.size(1)
        return torch.sparse_csr_tensor(self.t_crow, self.t_col.to(col.dtype), x.values()[self.order],
                                       (x.size(1), x.size(0)), check_invariants=False)



class _InputProjection(torch.autograd.Function):
    """``x @ weight.T`` for first-layer inputs that never need a gradient: bfloat16 dense or sparse CSR.

    - bfloat16 ``x`` (generated features stored in bfloat16): both products (forward, and the weight
      gradient ``grad.T @ x``) run in bfloat16 with float32 accumulation on CPUs with native bf16 units,
      ~2x (forward) to ~10x (weight gradient) faster than float32 on a [2708, 1433] matrix; the
      output and the weight gradient are rounded to bfloat16 and returned in ``weight``'s dtype.
    - CSR ``x``: the forward product is ~20x cheaper than COO's, and the weight gradient
      ``x.T @ grad`` avoids autograd's generic sparse path.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, csr_transpose: _CSRTransposer) -> Tensor:
        ctx.save_for_backward(x)
        ctx.csr_transpose = csr_transpose
        if x.layout == torch.sparse_csr:
            return x @ weight.t()
        return torch.mm(x, weight.to(x.dtype).t()).to(weight.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        if not ctx.needs_input_grad[1]:
            return None, None, None
        if x.layout == torch.sparse_csr:
            return None, (ctx.csr_transpose(x) @ grad).t(), None
        return None, torch.mm(grad.to(x.dtype).t(), x).to(grad.dtype), None


class InputLinear(Linear):
    """PyG ``Linear`` whose input may also be bfloat16 (with float32 weights) or sparse CSR.

    Other inputs take ``Linear``'s own path. The LA backbones use it as the first-layer projection of
    every branch (``conv.lin``): its parameters and ``state_dict`` keys are ``Linear``'s, so models and
    checkpoints are unchanged; only the generated bfloat16 / CSR inputs take :class:`_InputProjection`.
    """

    def forward(self, x: Tensor) -> Tensor:
        mixed = x.dtype == torch.bfloat16 and self.weight.dtype != torch.bfloat16
        if (x.layout != torch.sparse_csr and not mixed) or x.requires_grad:
            return super().forward(x.to(self.weight.dtype) if mixed else x)
        if not hasattr(self, "_csr_transpose"):  # made here: re-classed modules never run an __init__
            self._csr_transpose = _CSRTransposer()
        out = _InputProjection.apply(x, self.weight, self._csr_transpose)
        return out if self.bias is None else out + self.bias


def _with_input_linear(conv: nn.Module) -> nn.Module:
    """Let a first-layer conv's projection ``conv.lin`` (a PyG ``Linear``) take bfloat16 / CSR inputs.

    :class:`InputLinear` adds no parameters or buffers (only a CSR-transpose cache it makes on first use), so
    the existing module is re-classed in place: its parameters
    (already initialised by the conv), their keys and the random stream of model construction stay
    exactly as they were (building a new ``Linear`` would draw another initialisation)."""
    lin = getattr(conv, "lin", None)
    if type(lin) is Linear:
        lin.__class__ = InputLinear
    return conv


def _is_adjacency(edge_index) -> bool:
    """True for the sparse adjacency forms PyG's convolutions take instead of ``edge_index``: a torch sparse
    tensor (COO / CSR / CSC) or a ``torch_sparse.SparseTensor``."""
    if isinstance(edge_index, Tensor):
        return edge_index.layout in (torch.sparse_coo, torch.sparse_csr, torch.sparse_csc)
    return type(edge_index).__name__ == "SparseTensor" and hasattr(edge_index, "sparse_sizes")


def _check_inputs(x: Tensor, edge_index, in_channels: int) -> None:
    if not isinstance(x, Tensor) or x.dim() != 2 or x.size(1) != in_channels:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x: expected a 2-D tensor [N, C] with C={in_channels}, got shape {shape}")
    if not x.is_floating_point():
        raise TypeError(f"x: expected floating-point features (e.g. x.float()), got {x.dtype}")
    if _is_adjacency(edge_index):
        sizes = tuple(edge_index.sparse_sizes()) if not isinstance(edge_index, Tensor) else tuple(edge_index.shape)
        if len(sizes) != 2 or sizes[0] != sizes[1] or sizes[0] != x.size(0):
            raise ValueError(f"edge_index: expected a sparse adjacency (adj_t) of shape [N, N] with N={x.size(0)} "
                             f"(the rows of x), got shape {sizes}")
        return
    if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or edge_index.size(0) != 2:
        shape = tuple(edge_index.shape) if isinstance(edge_index, Tensor) else type(edge_index).__name__
        raise ValueError(f"edge_index: expected a [2, E] tensor or a sparse adjacency adj_t [N, N], got {shape}")
    if edge_index.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"edge_index: expected an integer [2, E] tensor, got {edge_index.dtype}")


class _Branch(nn.Module):
    """One first-layer branch: input dropout -> conv -> optional batch norm -> activation."""

    def __init__(self, conv: nn.Module, norm: nn.Module, activation, input_dropout: float):
        super().__init__()
        self.conv, self.norm, self.activation, self.input_dropout = conv, norm, activation, input_dropout

    def reset_parameters(self) -> None:
        self.conv.reset_parameters()
        if hasattr(self.norm, "reset_parameters"):
            self.norm.reset_parameters()

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        x = input_dropout(x, self.input_dropout, self.training)
        return self.activation(self.norm(self.conv(x, edge_index)))

    def __repr__(self) -> str:
        return repr(self.conv)


class _LAMessagePassingNet(nn.Module):
    """Shared skeleton: a BranchConcat first layer, ``num_layers - 2`` hidden convs, an output conv."""

    activation = staticmethod(F.relu)

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, *, num_generated: int,
                 num_layers: int, dropout: float, input_dropout: float | None, batch_norm: bool):
        super().__init__()
        for arg, value, low in (("in_channels", in_channels, 1), ("hidden_channels", hidden_channels, 1),
                                ("out_channels", out_channels, 1), ("num_generated", num_generated, 0),
                                ("num_layers", num_layers, 2)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{arg}: expected an int >= {low}, got {value!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a value in [0, 1), got {dropout}")
        self.in_channels, self.hidden_channels, self.out_channels = in_channels, hidden_channels, out_channels
        self.num_generated, self.num_layers, self.dropout = num_generated, num_layers, dropout
        self.input_dropout = dropout if input_dropout is None else input_dropout
        first_width = self._first_out_width(hidden_channels)
        width = first_width * (num_generated + 1)

        def norm(channels: int) -> nn.Module:
            return nn.BatchNorm1d(channels) if batch_norm else nn.Identity()

        self.first = BranchConcat([
            _Branch(_with_input_linear(self._conv(in_channels, hidden_channels, layer=0)), norm(first_width),
                    self.activation, self.input_dropout) for _ in range(num_generated + 1)])
        self.hidden_convs = nn.ModuleList([self._conv(width, width, layer=i) for i in range(1, num_layers - 1)])
        self.hidden_norms = nn.ModuleList([norm(width) for _ in range(1, num_layers - 1)])
        self.out_conv = self._conv(width, out_channels, layer=num_layers - 1, last=True)

    def _first_out_width(self, hidden_channels: int) -> int:
        return hidden_channels

    def _conv(self, in_channels: int, out_channels: int, layer: int, last: bool = False) -> nn.Module:
        raise NotImplementedError

    def reset_parameters(self) -> None:
        self.first.reset_parameters()
        for module in [*self.hidden_convs, *self.hidden_norms, self.out_conv]:
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()

    def forward(self, x: Tensor, edge_index: Tensor, x_generated: Tensor | Sequence[Tensor] | None = None) -> Tensor:
        """``x [N, F]``, ``edge_index [2, E]``, ``x_generated``: ``num_generated`` matrices ``[N, F]``
        (a list, a ``[G, N, F]`` stack, or one ``[N, F]`` when G=1). Returns logits ``[N, out_channels]``."""
        _check_inputs(x, edge_index, self.in_channels)
        hidden = self.first([x, *_generated_list(x, x_generated, self.num_generated)], edge_index)
        for conv, norm in zip(self.hidden_convs, self.hidden_norms):
            hidden = F.dropout(hidden, self.dropout, training=self.training)
            hidden = self.activation(norm(conv(hidden, edge_index)))
        hidden = F.dropout(hidden, self.dropout, training=self.training)
        return self.out_conv(hidden, edge_index)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, {self.hidden_channels}, {self.out_channels}, "
                f"num_generated={self.num_generated}, num_layers={self.num_layers})")


class LAGCN(_LAMessagePassingNet):
    r"""LA-GCN: one ``GCNConv`` branch per input in the first layer, then plain GCN layers.

    Citation setting (paper): ``hidden_channels=8`` per branch (16 in total, like GCN), 2 layers,
    dropout 0.5 on the inputs and hidden layer. OGB setting: ``hidden_channels=128``, 3 layers,
    ``batch_norm=True``, ``input_dropout=0``. ``num_generated=0`` gives Kipf & Welling's GCN.

    Args:
        cached: cache the normalised adjacency (transductive training on one fixed graph).
    """

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, *, num_generated: int = 1,
                 num_layers: int = 2, dropout: float = 0.5, input_dropout: float | None = None,
                 batch_norm: bool = False, cached: bool = False):
        self.cached = cached
        super().__init__(in_channels, hidden_channels, out_channels, num_generated=num_generated,
                         num_layers=num_layers, dropout=dropout, input_dropout=input_dropout, batch_norm=batch_norm)

    def _conv(self, in_channels, out_channels, layer, last=False):
        return GCNConv(in_channels, out_channels, cached=self.cached)


class LASAGE(_LAMessagePassingNet):
    r"""LA-GraphSAGE: one ``SAGEConv`` (mean aggregation) branch per input, then plain SAGE layers.

    Paper setting on ogbn-arxiv: ``hidden_channels=128``, 3 layers, ``batch_norm=True``,
    ``input_dropout=0``, dropout 0.5. ``num_generated=0`` gives GraphSAGE.
    """

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, *, num_generated: int = 1,
                 num_layers: int = 2, dropout: float = 0.5, input_dropout: float | None = None,
                 batch_norm: bool = False, aggr: str = "mean"):
        self.aggr = aggr
        super().__init__(in_channels, hidden_channels, out_channels, num_generated=num_generated,
                         num_layers=num_layers, dropout=dropout, input_dropout=input_dropout, batch_norm=batch_norm)

    def _conv(self, in_channels, out_channels, layer, last=False):
        return SAGEConv(in_channels, out_channels, aggr=self.aggr)


class LAGAT(_LAMessagePassingNet):
    r"""LA-GAT: one multi-head ``GATConv`` branch per input (ELU), concatenated, then GAT layers.

    Paper setting (Cora/CiteSeer): ``hidden_channels=8``, ``heads=4`` per branch (8 heads in total,
    like GAT), ``out_heads=1``, dropout 0.6 on inputs, hidden features and attention coefficients,
    LeakyReLU slope 0.2; the authors' code uses ``ELU(alpha=0.2)`` as hidden activation (``elu_alpha``;
    GAT's own is 1). ``num_generated=0, heads=8`` gives Velickovic et al.'s GAT.
    """

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, *, num_generated: int = 1,
                 heads: int = 4, out_heads: int = 1, num_layers: int = 2, dropout: float = 0.6,
                 input_dropout: float | None = None, negative_slope: float = 0.2, batch_norm: bool = False,
                 elu_alpha: float = 1.0):
        if not isinstance(heads, int) or heads < 1 or not isinstance(out_heads, int) or out_heads < 1:
            raise ValueError(f"heads, out_heads: expected positive ints, got {heads!r}, {out_heads!r}")
        if not elu_alpha > 0:
            raise ValueError(f"elu_alpha: expected a positive float, got {elu_alpha!r}")
        self.elu_alpha = elu_alpha
        self.activation = functools.partial(F.elu, alpha=elu_alpha)
        self.heads, self.out_heads, self.negative_slope = heads, out_heads, negative_slope
        self._attention_dropout = dropout
        super().__init__(in_channels, hidden_channels, out_channels, num_generated=num_generated,
                         num_layers=num_layers, dropout=dropout, input_dropout=input_dropout, batch_norm=batch_norm)

    def _first_out_width(self, hidden_channels: int) -> int:
        return hidden_channels * self.heads

    def _conv(self, in_channels, out_channels, layer, last=False):
        if last:
            return GATConv(in_channels, out_channels, heads=self.out_heads, concat=False,
                           negative_slope=self.negative_slope, dropout=self._attention_dropout)
        if layer == 0:
            return GATConv(in_channels, out_channels, heads=self.heads, negative_slope=self.negative_slope,
                           dropout=self._attention_dropout)
        # hidden layers keep the width: heads x (width / heads)
        return GATConv(in_channels, out_channels // self.heads, heads=self.heads,
                       negative_slope=self.negative_slope, dropout=self._attention_dropout)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, {self.hidden_channels}, {self.out_channels}, "
                f"heads={self.heads}, num_generated={self.num_generated}, num_layers={self.num_layers})")


class LAGCNII(nn.Module):
    r"""LA-GCNII: one ``Linear`` + ReLU branch per input, concatenated to width ``(G + 1) * hidden``,
    then ``num_layers`` ``GCN2Conv`` layers (initial residual ``alpha``, identity mapping
    :math:`\beta_l = \log(\lambda / l + 1)` with ``theta`` = :math:`\lambda`) and a linear classifier.

    The paper applies weight decay ``wd_conv`` to the convolutions and ``wd_linear`` to the linear
    maps: build the optimiser from :meth:`parameter_groups`. ``num_generated=0`` gives GCNII.
    """

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, *, num_generated: int = 1,
                 num_layers: int = 64, alpha: float = 0.1, theta: float = 0.5, dropout: float = 0.6):
        super().__init__()
        for arg, value, low in (("in_channels", in_channels, 1), ("hidden_channels", hidden_channels, 1),
                                ("out_channels", out_channels, 1), ("num_generated", num_generated, 0),
                                ("num_layers", num_layers, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{arg}: expected an int >= {low}, got {value!r}")
        self.in_channels, self.hidden_channels, self.out_channels = in_channels, hidden_channels, out_channels
        self.num_generated, self.num_layers, self.alpha, self.theta = num_generated, num_layers, alpha, theta
        self.dropout = dropout
        width = hidden_channels * (num_generated + 1)
        self.input_linears = nn.ModuleList([nn.Linear(in_channels, hidden_channels) for _ in range(num_generated + 1)])
        self.convs = nn.ModuleList([GCN2Conv(width, alpha=alpha, theta=theta, layer=layer + 1, shared_weights=True)
                                    for layer in range(num_layers)])
        self.out_linear = nn.Linear(width, out_channels)

    def reset_parameters(self) -> None:
        for module in [*self.input_linears, *self.convs, self.out_linear]:
            module.reset_parameters()

    def parameter_groups(self, wd_conv: float, wd_linear: float) -> list[dict]:
        """Optimiser parameter groups: the convolutions with ``wd_conv``, the linear maps with ``wd_linear``."""
        linears = [*self.input_linears.parameters(), *self.out_linear.parameters()]
        return [{"params": list(self.convs.parameters()), "weight_decay": wd_conv},
                {"params": linears, "weight_decay": wd_linear}]

    def forward(self, x: Tensor, edge_index: Tensor, x_generated: Tensor | Sequence[Tensor] | None = None) -> Tensor:
        _check_inputs(x, edge_index, self.in_channels)
        inputs = [x, *_generated_list(x, x_generated, self.num_generated)]
        hidden = torch.cat([F.relu(linear(input_dropout(features, self.dropout, self.training)))
                            for linear, features in zip(self.input_linears, inputs)], dim=-1)
        initial = hidden
        for conv in self.convs:
            hidden = F.dropout(hidden, self.dropout, training=self.training)
            hidden = F.relu(conv(hidden, initial, edge_index))
        hidden = F.dropout(hidden, self.dropout, training=self.training)
        return self.out_linear(hidden)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, {self.hidden_channels}, {self.out_channels}, "
                f"num_generated={self.num_generated}, num_layers={self.num_layers})")


class LocalAugmentationWrapper(nn.Module):
    r"""Local augmentation for any PyG node model ``backbone(x, edge_index, *args, **kwargs)``.

    - ``style="average"``: the backbone sees :math:`(X + \hat X) / 2` (the paper's ogbn-products setting);
    - ``style="concat"``: the backbone sees :math:`[X \Vert \hat X]` and must take ``2 F`` input channels
      (``(G + 1) F`` with G generated matrices).

    For first-layer concatenation with custom convolutions use :class:`geoattn.nn.BranchConcat`.
    """

    def __init__(self, backbone: nn.Module, style: str = "average"):
        super().__init__()
        if style not in ("average", "concat"):
            raise ValueError(f"style: expected 'average' or 'concat', got {style!r}")
        self.backbone, self.style = backbone, style

    def reset_parameters(self) -> None:
        if hasattr(self.backbone, "reset_parameters"):
            self.backbone.reset_parameters()

    def forward(self, x: Tensor, edge_index: Tensor, x_generated: Tensor | Sequence[Tensor], *args, **kwargs) -> Tensor:
        if isinstance(x_generated, Tensor) and x_generated.dim() == 3:
            x_generated = list(x_generated.unbind(0))
        return self.backbone(combine_augmented(x, x_generated, self.style), edge_index, *args, **kwargs)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.backbone!r}, style={self.style!r})"
