r"""Local augmentation (LAGNN, Liu et al., ICML 2022): a conditional generator of neighbour features.

:class:`LocalAugmenter` is a conditional VAE that models the feature distribution of a node's
neighbours given the node itself, :math:`p_\theta(X_u \mid z, X_v)` for edges :math:`u \to v`:

.. math::
    q_\phi(z \mid X_u, X_v) = \mathcal N\big(\mu_\phi([X_u \| X_v]),\ \operatorname{diag}\sigma^2_\phi([X_u \| X_v])\big),
    \qquad \hat X_v = \operatorname{Dec}_\theta([z \| X_v]),\quad z \sim \mathcal N(0, I).

It is fitted once per graph on all (neighbour, centre) feature pairs (ELBO: reconstruction + KL,
summed over features, averaged over the batch) and afterwards draws a fresh neighbour-like feature
matrix :math:`\hat X` per call. Two output variants follow the paper's two code bases:

- ``variant="citation"``: sigmoid output and binary cross-entropy, for raw 0/1 bag-of-words features;
- ``variant="ogb"``: batch norm after every hidden/output linear map, tanh output and squared error,
  for dense real features.

Training GNNs with the samples (:func:`consistency_loss`, :class:`BranchConcat`) lives here too; the
LA backbones are in :mod:`geoattn.models.lagnn`.
"""
from __future__ import annotations

import copy
import io
import math
import os
import pickle
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from geoattn.io import check_plain, atomic_write_bytes

__all__ = [
    "LocalAugmenter",
    "CachedSampler",
    "UncertaintySelector",
    "consistency_loss",
    "BranchConcat",
    "combine_augmented",
    "row_normalize",
]

_FORMAT = "geoattn.LocalAugmenter/1"
_VARIANTS = ("citation", "ogb")


def _row_divisors(x: Tensor) -> Tensor:
    total = x.sum(dim=-1, keepdim=True)
    return torch.where(total == 0, torch.ones_like(total), total)


def row_normalize(x: Tensor) -> Tensor:
    """Divide every row by its sum (rows summing to 0 stay 0), as Kipf-style citation features."""
    return x / _row_divisors(x)


def _activate(variant: str, logits: Tensor, inplace: bool = False) -> Tensor:
    """The generator's output activation: sigmoid (citation, probabilities of words) or tanh (OGB)."""
    if variant == "citation":
        return torch.sigmoid_(logits) if inplace else torch.sigmoid(logits)
    return torch.tanh_(logits) if inplace else torch.tanh(logits)


def _check_features(name: str, x: Tensor, num_features: int) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a Tensor, got {type(x).__name__}")
    if x.dim() != 2 or x.size(1) != num_features:
        raise ValueError(f"{name}: expected a 2-D tensor [N, F] with F={num_features}, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {x.dtype}")


class LocalAugmenter(nn.Module):
    r"""Conditional VAE generating neighbour features :math:`\hat X_v \sim p(X_u \mid X_v)`.

    Args:
        num_features: feature width ``F`` (input and output).
        hidden_channels: width of the hidden layer of encoder and decoder (the paper uses 256).
        latent_channels: width ``L`` of ``z`` (10 in the paper's code, 5 for its PubMed checkpoint).
        variant: ``"citation"`` (sigmoid + BCE; features in [0, 1]) or ``"ogb"`` (batch norm, tanh + MSE).

    Shapes:
        - ``forward(x_neighbor [B, F], x_center [B, F]) -> (reconstruction [B, F], mean [B, L], log_var [B, L])``
        - ``sample(x [N, F], num_samples=None) -> [N, F]`` (or ``[S, N, F]`` with ``num_samples=S``)

    A model is stored as a ``state_dict`` plus its constructor arguments (:meth:`save` /
    :meth:`load`), never as a pickled module, so it loads with ``torch.load(weights_only=True)``.
    """

    def __init__(self, num_features: int, hidden_channels: int = 256, latent_channels: int = 10,
                 variant: str = "citation"):
        super().__init__()
        for arg, value in (("num_features", num_features), ("hidden_channels", hidden_channels),
                           ("latent_channels", latent_channels)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{arg}: expected a positive int, got {value!r}")
        if variant not in _VARIANTS:
            raise ValueError(f"variant: expected one of {_VARIANTS}, got {variant!r}")
        self.num_features = num_features
        self.hidden_channels = hidden_channels
        self.latent_channels = latent_channels
        self.variant = variant
        self.metadata: dict = {}  # how the generator was fitted, recorded by the caller (see save / load)
        batch_norm = variant == "ogb"

        def norm(width: int) -> nn.Module:
            return nn.BatchNorm1d(width) if batch_norm else nn.Identity()

        self.encoder = nn.Sequential(nn.Linear(2 * num_features, hidden_channels), norm(hidden_channels), nn.ReLU())
        self.mean_head = nn.Linear(hidden_channels, latent_channels)
        self.log_var_head = nn.Linear(hidden_channels, latent_channels)
        # The decoder's first map acts on [z || x_center]; `sample` splits its weight so that the
        # centre part is computed once for all samples.
        self.decoder_input = nn.Linear(latent_channels + num_features, hidden_channels)
        self.decoder_hidden = nn.Sequential(norm(hidden_channels), nn.ReLU())
        self.decoder_output = nn.Sequential(nn.Linear(hidden_channels, num_features), norm(num_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()

    @property
    def config(self) -> dict:
        """Constructor arguments, enough to rebuild the module."""
        return {"num_features": self.num_features, "hidden_channels": self.hidden_channels,
                "latent_channels": self.latent_channels, "variant": self.variant}

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.num_features}, hidden_channels={self.hidden_channels}, "
                f"latent_channels={self.latent_channels}, variant={self.variant!r})")

    # ----------------------------------------------------------------------------------- model
    def encode(self, x_neighbor: Tensor, x_center: Tensor) -> tuple[Tensor, Tensor]:
        hidden = self.encoder(torch.cat([x_neighbor, x_center], dim=-1))
        return self.mean_head(hidden), self.log_var_head(hidden)

    def decode(self, z: Tensor, x_center: Tensor) -> Tensor:
        """Generated features for latent codes ``z [B, L]`` and centres ``x_center [B, F]``."""
        hidden = self.decoder_hidden(self.decoder_input(torch.cat([z, x_center], dim=-1)))
        return _activate(self.variant, self.decoder_output(hidden))

    def forward(self, x_neighbor: Tensor, x_center: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        _check_features("x_neighbor", x_neighbor, self.num_features)
        _check_features("x_center", x_center, self.num_features)
        mean, log_var = self.encode(x_neighbor, x_center)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * log_var) if self.training else mean
        return self.decode(z, x_center), mean, log_var

    def loss(self, reconstruction: Tensor, x_neighbor: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
        r"""Negative ELBO per pair: (reconstruction error summed over features + KL) / batch size."""
        dtype = torch.promote_types(reconstruction.dtype, torch.float32)  # sums over F * B terms: >= fp32
        reconstruction, x_neighbor = reconstruction.to(dtype), x_neighbor.to(dtype)
        if self.variant == "citation":
            reconstruction_error = F.binary_cross_entropy(reconstruction, x_neighbor, reduction="sum")
        else:
            reconstruction_error = F.mse_loss(reconstruction, x_neighbor, reduction="sum")
        kl = -0.5 * torch.sum(1 + log_var - mean.pow(2) - log_var.exp())
        return (reconstruction_error + kl) / x_neighbor.size(0)

    # ---------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(self, x: Tensor, num_samples: int | None = None, *, generator: torch.Generator | None = None,
               normalize: bool = False) -> Tensor:
        r"""Draw :math:`\hat X = \operatorname{Dec}(z, X)` with fresh :math:`z \sim \mathcal N(0, I)` per node.

        Args:
            x: centre features ``[N, F]`` (the same kind of features the model was fitted on), dense or
                sparse COO. A node's sample depends only on its own features, so a subset of nodes is
                ``sample(x[index])``.
            num_samples: ``None`` for one ``[N, F]`` matrix, ``S`` for a stack ``[S, N, F]``.
            generator: a ``torch.Generator`` on ``x``'s device for reproducible draws.
            normalize: row-normalise every sample (the citation code feeds GNNs row-normalised features).

        Runs in evaluation mode (batch-norm running statistics) without gradients. The noise is drawn in
        ``x``'s dtype, the decoder runs in the module's dtype (convert the module, e.g. to bfloat16, for
        faster sampling) and the result has ``x``'s dtype and device. To draw many times from the same
        ``x`` (a fresh matrix per training step), :meth:`sampler` caches the centre term instead.
        """
        _check_features("x", x, self.num_features)
        if num_samples is not None and (not isinstance(num_samples, int) or num_samples < 1):
            raise ValueError(f"num_samples: expected None or a positive int, got {num_samples!r}")
        draw = CachedSampler(self, x, generator=generator, normalize=normalize, dtype=self.decoder_input.weight.dtype,
                             out_dtype=x.dtype)
        samples = [draw() for _ in range(1 if num_samples is None else num_samples)]
        return samples[0] if num_samples is None else torch.stack(samples)

    def sampler(self, x: Tensor, *, generator: torch.Generator | None = None, normalize: bool = False,
                dtype: torch.dtype | None = None) -> "CachedSampler":
        r"""A function drawing a fresh :math:`\hat X` ``[N, F]`` for the fixed centres ``x`` per call.

        The decoder's centre term :math:`W_c X + b` (as costly as the output layer for dense ``x``) is
        computed once here; each call then costs one ``[N, L] -> [N, hidden] -> [N, F]`` decode. ``x`` may be
        sparse COO (bag-of-words), which makes the centre term cheap as well. ``dtype`` (default: the
        module's) is the decoder's compute dtype: ``torch.bfloat16`` is ~3x faster on CPUs with bf16 units;
        the output is float32 then (``x``'s dtype when it is a dense floating tensor and ``dtype`` is not
        given). The sampler holds a snapshot of the current weights in eval mode.
        """
        _check_features("x", x, self.num_features)
        return CachedSampler(self, x, generator=generator, normalize=normalize,
                             dtype=self.decoder_input.weight.dtype if dtype is None else dtype,
                             out_dtype=x.dtype if dtype is None else torch.promote_types(dtype, torch.float32))

    # ---------------------------------------------------------------------------------- training
    @staticmethod
    def training_pairs(edge_index: Tensor, num_nodes: int | None = None) -> Tensor:
        """(neighbour, centre) index pairs ``[2, P]`` of ``edge_index``: row 0 the source (neighbour),
        row 1 the target (centre); self loops are dropped, duplicates kept."""
        if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or edge_index.size(0) != 2:
            shape = tuple(edge_index.shape) if isinstance(edge_index, Tensor) else type(edge_index).__name__
            raise ValueError(f"edge_index: expected a [2, E] tensor, got {shape}")
        if edge_index.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"edge_index: expected an integer tensor, got {edge_index.dtype}")
        if num_nodes is not None and edge_index.numel() and (edge_index.min() < 0 or edge_index.max() >= num_nodes):
            raise ValueError(f"edge_index: expected node indices in [0, {num_nodes}), got "
                             f"[{int(edge_index.min())}, {int(edge_index.max())}]")
        return edge_index[:, edge_index[0] != edge_index[1]].long()

    def fit(self, x: Tensor, edge_index: Tensor, *, epochs: int = 10, batch_size: int = 64, lr: float = 0.01,
            max_steps: int | None = None, selector: Callable[["LocalAugmenter"], float] | None = None,
            select_every: int = 10, warmup_steps: int = 200, seed: int | None = None,
            progress: bool = True) -> dict:
        r"""Fit the generator on all (neighbour, centre) pairs of ``edge_index`` with Adam.

        Args:
            x: node features ``[N, F]`` (``citation``: values in [0, 1], e.g. raw binary bag-of-words).
            edge_index: ``[2, E]``; every edge ``u -> v`` without self loops gives one pair
                (neighbour ``x[u]``, centre ``x[v]``). Use a symmetric ``edge_index`` for undirected graphs.
            epochs, batch_size, lr: the paper's citation defaults are 10, 64 and 0.01.
            max_steps: stop after this many optimiser steps (the OGB code stops at a step budget).
            selector: optional score of the current generator, larger is better (e.g.
                :class:`UncertaintySelector`). When given, it is evaluated every ``select_every`` steps
                after ``warmup_steps`` and the best-scoring weights are restored at the end; without
                it the final weights are kept.
            seed: seeds pair shuffling and the reparameterisation noise (``None``: global RNG).
            progress: show a tqdm bar.

        Returns:
            ``{"steps", "loss" (per-epoch mean), "best_score", "best_step"}``.
        """
        _check_features("x", x, self.num_features)
        pairs = self.training_pairs(edge_index, x.size(0)).to(x.device)
        if pairs.size(1) == 0:
            raise ValueError("edge_index: no (neighbour, centre) pairs without self loops to fit on")
        for arg, value in (("epochs", epochs), ("batch_size", batch_size), ("select_every", select_every)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg}: expected a positive int, got {value!r}")
        if seed is not None:
            torch.manual_seed(seed)
        shuffle_generator = torch.Generator(device="cpu")
        shuffle_generator.manual_seed(int(torch.randint(0, 2**62, ())) if seed is None else seed)
        optimizer = torch.optim.Adam(self.parameters(), lr=lr)
        num_batches = math.ceil(pairs.size(1) / batch_size)
        total_steps = epochs * num_batches if max_steps is None else min(max_steps, epochs * num_batches)
        history = {"steps": 0, "loss": [], "best_score": None, "best_step": None}
        best_state = None
        self.train()
        bar = tqdm(total=total_steps, desc="LocalAugmenter.fit", disable=not progress, leave=False)
        step = 0
        try:
            for _ in range(epochs):
                order = torch.randperm(pairs.size(1), generator=shuffle_generator).to(x.device)
                epoch_loss, epoch_batches = 0.0, 0
                for start in range(0, pairs.size(1), batch_size):
                    if step >= total_steps:
                        break
                    batch = pairs[:, order[start:start + batch_size]]
                    if batch.size(1) < 2 and self.variant == "ogb":
                        continue  # batch norm needs two rows
                    x_neighbor, x_center = x[batch[0]], x[batch[1]]
                    reconstruction, mean, log_var = self(x_neighbor, x_center)
                    loss = self.loss(reconstruction, x_neighbor, mean, log_var)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    step += 1
                    epoch_loss += float(loss.detach())
                    epoch_batches += 1
                    bar.update(1)
                    if selector is not None and step > warmup_steps and step % select_every == 0:
                        score = float(selector(self))
                        self.train()
                        if history["best_score"] is None or score > history["best_score"]:
                            history["best_score"], history["best_step"] = score, step
                            best_state = copy.deepcopy(self.state_dict())
                            if hasattr(selector, "on_improvement"):
                                selector.on_improvement(self)
                        bar.set_postfix(loss=f"{float(loss.detach()):.2f}", best=f"{history['best_score']:.4f}")
                if epoch_batches:
                    history["loss"].append(epoch_loss / epoch_batches)
                if step >= total_steps:
                    break
        finally:
            bar.close()
        if best_state is not None:
            self.load_state_dict(best_state)
        history["steps"] = step
        self.eval()
        return history

    # ------------------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike, metadata: Mapping | None = None) -> None:
        """Write ``{"format", "config", "state_dict", "metadata"}`` to ``path`` atomically, with the mode a
        plain ``open`` gives (:func:`geoattn.io.atomic_write_bytes`). ``metadata`` (optional, plain types:
        str, int, float, bool, None, lists and dicts) records how the generator was fitted (seed, epochs,
        ...); :meth:`load` returns it as ``model.metadata``."""
        metadata = {} if metadata is None else dict(metadata)
        check_plain(metadata, "metadata")
        payload = {"format": _FORMAT, "config": self.config, "metadata": metadata,
                   "state_dict": {key: value.detach().cpu() for key, value in self.state_dict().items()}}
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike, map_location=None) -> "LocalAugmenter":
        """Rebuild a generator written by :meth:`save` (weights-only unpickling), in eval mode; the fit record
        given to :meth:`save` is ``model.metadata`` (``{}`` for files written without one). A file that is
        not a :meth:`save` file raises ``ValueError`` naming it."""
        try:
            payload = torch.load(path, map_location=map_location, weights_only=True)
        except (pickle.UnpicklingError, KeyError, EOFError, RuntimeError) as error:
            raise ValueError(f"{path}: expected a file written by LocalAugmenter.save ({_FORMAT}), got a file "
                             f"torch.load cannot read ({type(error).__name__}: {error})") from None
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
            raise ValueError(f"{path}: expected a file written by LocalAugmenter.save ({_FORMAT}), got {found!r}")
        model = cls(**payload["config"])
        model.load_state_dict(payload["state_dict"])
        model.metadata = dict(payload.get("metadata", {}))
        return model.to(map_location).eval() if map_location is not None else model.eval()


class CachedSampler:
    r"""Fresh samples :math:`\hat X = \operatorname{Dec}([z \Vert X])` for fixed centres ``X``; see
    :meth:`LocalAugmenter.sampler`. Calling it returns ``[N, F]``.

    The decoder's first map is split as :math:`W [z \Vert X] + b = W_z z + (W_c X + b)`; the bracket is
    computed once (sparse-aware), so a draw costs ``N (L + F) h`` multiply-adds instead of
    ``N (L + 2 F) h``.
    """

    def __init__(self, augmenter: LocalAugmenter, x: Tensor, *, generator: torch.Generator | None,
                 normalize: bool, dtype: torch.dtype, out_dtype: torch.dtype):
        self.generator, self.normalize, self.dtype, self.out_dtype = generator, normalize, dtype, out_dtype
        self.variant = augmenter.variant
        self.num_nodes, self.device, self.noise_dtype = x.size(0), x.device, x.dtype
        latent = augmenter.latent_channels
        with torch.no_grad():
            weight, bias = augmenter.decoder_input.weight, augmenter.decoder_input.bias
            accumulate = torch.promote_types(weight.dtype, torch.float32)
            center_weight = weight[:, latent:].to(accumulate)
            features = x.to(accumulate)
            center = (torch.sparse.mm(features, center_weight.t()) if features.is_sparse
                      else features @ center_weight.t())
            self.center_term = center + bias.to(accumulate)  # [N, hidden]
            self.latent_weight = weight[:, :latent].to(accumulate).t().contiguous()  # [L, hidden]
        self.latent_channels = latent
        # private eval-mode copies in the compute dtype: sampling never touches the caller's module
        self.hidden = copy.deepcopy(augmenter.decoder_hidden).to(dtype).eval()
        self.output = copy.deepcopy(augmenter.decoder_output).to(dtype).eval()

    @torch.no_grad()
    def __call__(self) -> Tensor:
        noise_dtype = self.noise_dtype if self.noise_dtype.is_floating_point else torch.float32
        z = torch.randn(self.num_nodes, self.latent_channels, generator=self.generator, dtype=noise_dtype,
                        device=self.device)
        pre_activation = torch.addmm(self.center_term, z.to(self.latent_weight.dtype), self.latent_weight)
        logits = self.output(self.hidden(pre_activation.to(self.dtype)))
        # the [N, F] passes below run in place on one buffer: for wide bag-of-words F they cost about as
        # much as the output matrix product (and bfloat16 elementwise maths is slow on CPUs)
        x_hat = logits.to(torch.promote_types(self.out_dtype, torch.float32))
        x_hat = _activate(self.variant, x_hat, inplace=True)
        if self.normalize:
            x_hat.div_(_row_divisors(x_hat))
        return x_hat.to(self.out_dtype)


class UncertaintySelector:
    r"""Checkpoint score for :meth:`LocalAugmenter.fit`: MC-dropout uncertainty of a small GCN (LAGNN §B.2).

    A 2-layer GCN is trained on the real features first. A generator is scored by drawing
    :math:`\hat X`, running the GCN ``mc_samples`` times with dropout active on :math:`\hat X` and measuring
    the disagreement of the passes on the training nodes:

    - ``criterion="label"`` (the official code): :math:`U = \mathrm{NLL}(\bar p) - \frac1K\sum_k \mathrm{NLL}(p_k)`
      with the true labels, :math:`\bar p = \frac1K \sum_k p_k`;
    - ``criterion="bald"`` (the paper's formula): :math:`U = H[\bar p] - \frac1K \sum_k H[p_k]`.

    After every improvement the GCN is fine-tuned on the new :math:`\hat X` for ``finetune_epochs``
    (:meth:`on_improvement`), as in the official code. ``x`` are the features the GCN sees
    (row-normalised for citation data); ``generator_x`` those the generator is conditioned on.
    """

    def __init__(self, x: Tensor, edge_index: Tensor, y: Tensor, train_index: Tensor, *,
                 generator_x: Tensor | None = None, hidden_channels: int = 32, dropout: float = 0.5,
                 epochs: int = 100, finetune_epochs: int = 20, lr: float = 0.01, weight_decay: float = 5e-4,
                 mc_samples: int = 20, normalize: bool = True, criterion: str = "label", seed: int = 0):
        from torch_geometric.nn import GCNConv

        if criterion not in ("label", "bald"):
            raise ValueError(f"criterion: expected 'label' or 'bald', got {criterion!r}")
        if mc_samples < 2:
            raise ValueError(f"mc_samples: expected an int >= 2, got {mc_samples!r}")
        self.x, self.edge_index, self.y = x, edge_index, y
        self.train_index = train_index
        self.generator_x = x if generator_x is None else generator_x
        self.dropout, self.mc_samples, self.normalize, self.criterion = dropout, mc_samples, normalize, criterion
        self.finetune_epochs = finetune_epochs
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        num_classes = int(y.max()) + 1
        self.convs = nn.ModuleList([GCNConv(x.size(1), hidden_channels, cached=True),
                                    GCNConv(hidden_channels, num_classes, cached=True)]).to(x.device)
        self.optimizer = torch.optim.Adam(self.convs.parameters(), lr=lr, weight_decay=weight_decay)
        self._train(self.x, epochs)
        torch.random.set_rng_state(generator_state)
        self.sample_generator = torch.Generator(device=x.device)
        self.sample_generator.manual_seed(seed)

    def _logits(self, x: Tensor) -> Tensor:
        hidden = F.dropout(x, self.dropout, training=True)
        hidden = F.dropout(F.relu(self.convs[0](hidden, self.edge_index)), self.dropout, training=True)
        return self.convs[1](hidden, self.edge_index)

    def _train(self, x: Tensor, epochs: int) -> None:
        for _ in range(epochs):
            self.optimizer.zero_grad()
            loss = F.cross_entropy(self._logits(x)[self.train_index], self.y[self.train_index])
            loss.backward()
            self.optimizer.step()

    def _draw(self, augmenter: LocalAugmenter) -> Tensor:
        return augmenter.sample(self.generator_x, generator=self.sample_generator, normalize=self.normalize)

    @torch.no_grad()
    def __call__(self, augmenter: LocalAugmenter) -> float:
        self._last = self._draw(augmenter)
        log_probs = torch.stack([F.log_softmax(self._logits(self._last)[self.train_index], dim=-1)
                                 for _ in range(self.mc_samples)])
        mean_log_prob = torch.logsumexp(log_probs, dim=0) - math.log(self.mc_samples)
        if self.criterion == "label":
            labels = self.y[self.train_index]
            return float(F.nll_loss(mean_log_prob, labels)
                         - torch.stack([F.nll_loss(lp, labels) for lp in log_probs]).mean())
        entropy_of_mean = -(mean_log_prob.exp() * mean_log_prob).sum(-1).mean()
        mean_entropy = -(log_probs.exp() * log_probs).sum(-1).mean()
        return float(entropy_of_mean - mean_entropy)

    def on_improvement(self, augmenter: LocalAugmenter) -> None:
        with torch.enable_grad():
            self._train(self._last, self.finetune_epochs)


def consistency_loss(log_probs: Sequence[Tensor] | Tensor, temperature: float = 0.5) -> Tensor:
    r"""Sharpened consistency loss of GRAND / LAGNN over ``K`` predictions of the same nodes.

    .. math::
        \bar p = \frac1K\sum_k p_k,\quad
        \bar p'_{ic} = \frac{\bar p_{ic}^{1/T}}{\sum_{c'} \bar p_{ic'}^{1/T}}\ (\text{no gradient}),\quad
        \mathcal L_c = \frac1K \sum_k \frac1N \sum_i \lVert \bar p'_i - p_{k,i} \rVert_2^2 .

    Args:
        log_probs: ``K`` log-probabilities ``[N, C]`` (a list or a ``[K, N, C]`` tensor).
        temperature: sharpening temperature ``T`` (0.5 in the paper); ``T = 1`` means no sharpening.

    Returns:
        a scalar (multiply by the weight :math:`\beta` yourself). It is zero when all predictions agree
        and are one-hot, or agree at ``T = 1``. Computed in float32 at least.
    """
    stacked = torch.stack(list(log_probs)) if not isinstance(log_probs, Tensor) else log_probs
    if stacked.dim() != 3:
        raise ValueError(f"log_probs: expected K tensors [N, C] or one [K, N, C] tensor, got shape {tuple(stacked.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature: expected a positive float, got {temperature}")
    if stacked.size(1) == 0:
        return stacked.sum() * 0.0
    probs = stacked.to(torch.promote_types(stacked.dtype, torch.float32)).exp()
    with torch.no_grad():
        mean = probs.mean(dim=0)
        sharpened = mean.pow(1.0 / temperature)
        sharpened = sharpened / sharpened.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(sharpened.dtype).tiny)
    return (probs - sharpened).pow(2).sum(dim=-1).mean()


class BranchConcat(nn.Module):
    r"""Apply branch ``i`` to input ``i`` and concatenate the outputs (LAGNN's "concatenation style").

    .. math:: H = \big\Vert_{i} \operatorname{branch}_i(X_i, \ldots)

    With a PyG convolution per branch this is LAGNN's first layer
    :math:`\sigma(\tilde P X W_0) \Vert \sigma(\tilde P \hat X W_1)`. Any modules with the same call
    signature work.

    Shapes: ``forward([X_0 [N, F_0], X_1 [N, F_1], ...], *args, **kwargs) -> [N, sum_i C_i]``.
    Extra positional and keyword arguments (``edge_index`` ...) are passed to every branch.
    """

    def __init__(self, branches: Sequence[nn.Module]):
        super().__init__()
        if len(branches) == 0:
            raise ValueError("branches: expected at least one module, got none")
        self.branches = nn.ModuleList(branches)

    def reset_parameters(self) -> None:
        for branch in self.branches:
            if hasattr(branch, "reset_parameters"):
                branch.reset_parameters()

    def forward(self, inputs: Sequence[Tensor], *args, **kwargs) -> Tensor:
        if len(inputs) != len(self.branches):
            raise ValueError(f"inputs: expected {len(self.branches)} tensors (one per branch), got {len(inputs)}")
        return torch.cat([branch(x, *args, **kwargs) for branch, x in zip(self.branches, inputs)], dim=-1)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({len(self.branches)} x {self.branches[0]!r})"


def combine_augmented(x: Tensor, x_generated: Tensor | Sequence[Tensor], style: str = "average") -> Tensor:
    r"""Merge real and generated features at the input of an unchanged backbone.

    - ``"average"``: :math:`(X + \frac1G\sum_g \hat X_g) / 2` for G=1 this is LAGNN's average style (ogbn-products);
      more generated matrices are averaged first. Output ``[N, F]``.
    - ``"concat"``: :math:`[X \Vert \hat X_1 \Vert \ldots]`, the authors' plug-and-play suggestion; output
      ``[N, (G + 1) F]``, so the backbone's input width must be ``(G + 1) F``.
    """
    generated = [x_generated] if isinstance(x_generated, Tensor) else list(x_generated)
    if not generated:
        raise ValueError("x_generated: expected at least one generated feature matrix, got none")
    for index, x_hat in enumerate(generated):
        if x_hat.shape != x.shape:
            raise ValueError(f"x_generated[{index}]: expected shape {tuple(x.shape)} like x, got {tuple(x_hat.shape)}")
    if style == "average":
        return 0.5 * (x + torch.stack(generated).mean(dim=0))
    if style == "concat":
        return torch.cat([x, *generated], dim=-1)
    raise ValueError(f"style: expected 'average' or 'concat', got {style!r}")
