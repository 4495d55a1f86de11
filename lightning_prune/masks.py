"""Mask bookkeeping: select, cut, keep cut weights at zero, undo the last cut.

No forward pre-hooks and no ``weight_orig`` copies: the weights themselves hold the zeros. What keeps them at zero is
one fused multiply after each optimizer step (whatever the optimizer did, a cut weight is zero before the next
forward), and the optimizer's per-weight state is zeroed at the cut. The mask is stored once, as a multiplier of the
weight's own dtype (0 cut, 1 kept): multiplying by it is ~10x faster than by a bool mask, and the bool view
(``pruned``) is derived when a decision needs it. A tensor that was never cut has no mask at all.
"""

import math
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any

import torch
from torch import Tensor

from lightning_prune.layers import count_nonzero
from lightning_prune.optim import zero_state_entries


class PrunedView(MutableMapping):
    """``masks.pruned[name]``: a bool tensor, ``True`` where the weight is cut; derived from the multipliers on each
    read (read it once per decision, not per step), and setting it marks those entries cut without touching weights."""

    def __init__(self, masks: "PruningMasks") -> None:
        self.masks = masks

    def __getitem__(self, name: str) -> Tensor:
        keep = self.masks.keep.get(name)
        if keep is None:
            return torch.zeros_like(self.masks.weights[name], dtype=torch.bool)
        return keep == 0

    def __setitem__(self, name: str, pruned: Tensor) -> None:
        weight = self.masks.weights[name]
        if pruned.shape != weight.shape:
            raise ValueError(f"mask {name!r} has shape {tuple(pruned.shape)}, the weight {tuple(weight.shape)}")
        if bool(pruned.any()):
            self.masks.keep[name] = (~pruned).to(device=weight.device, dtype=weight.dtype)
        else:
            self.masks.keep.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self.masks.weights

    def __delitem__(self, name: str) -> None:
        raise TypeError("masks cannot be removed; set them to all False instead")

    def __iter__(self) -> Iterator[str]:
        return iter(self.masks.weights)

    def __len__(self) -> int:
        return len(self.masks.weights)


class PruningMasks:
    """Masks over a set of named weights.

    Args:
        weights: The prunable weights, by name.

    Example:
        >>> w = torch.nn.Parameter(torch.tensor([[0.1, 0.9], [0.5, 0.3]]))
        >>> masks = PruningMasks({"w": w})
        >>> cut = masks.select({"w": w.detach().abs()}, count=2, min_layer_density=0.0)
        >>> masks.cut(cut)
        2
        >>> w.data
        tensor([[0.0000, 0.9000],
                [0.5000, 0.0000]])
        >>> masks.pruned["w"], masks.sparsity()
        (tensor([[ True, False],
                [False,  True]]), 0.5)
        >>> masks.undo_last_cut()
        2
        >>> w.data
        tensor([[0.1000, 0.9000],
                [0.5000, 0.3000]])
    """

    def __init__(self, weights: Mapping[str, Tensor]) -> None:
        self.weights = dict(weights)
        # name -> multiplier of the weight's dtype (0 cut, 1 kept), only for tensors with a cut
        self.keep: dict[str, Tensor] = {}
        # flat indices and values of the last cut, per weight, so that a rollback can restore them exactly
        self.last_cut: dict[str, tuple[Tensor, Tensor]] = {}

    @property
    def pruned(self) -> PrunedView:
        return PrunedView(self)

    # -- counting, from the weights themselves ---------------------------------------------------------------------

    @property
    def num_weights(self) -> int:
        return sum(w.numel() for w in self.weights.values())

    def sparsity(self) -> float:
        """Fraction of these weights that are exactly zero."""
        return 1 - count_nonzero(self.weights) / self.num_weights

    @torch.no_grad()
    def layer_sparsity(self) -> dict[str, float]:
        return {name: 1 - float(w.count_nonzero()) / w.numel() for name, w in self.weights.items()}

    # -- selection -----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def select(
        self, scores: Mapping[str, Tensor], count: int, min_layer_density: float, normalize_per_layer: bool = True
    ) -> dict[str, Tensor]:
        """Choose ``count`` remaining weights with the lowest saliency, globally across weights.

        With ``normalize_per_layer`` scores are divided by each weight's mean remaining score first, so every layer
        loses about the same fraction; without it the raw scores compete, so layers whose weights matter less (by
        the saliency's own measure) lose more. No weight tensor is left with fewer than
        ``ceil(min_layer_density * numel)`` remaining entries.

        Returns:
            Flat indices to cut, per weight name (only weights that lose something).
        """
        names, candidates, positions = [], [], []
        for name, w in self.weights.items():
            # the positions still there (None: all of them, a tensor never cut)
            remaining = (self.keep[name].view(-1) != 0).nonzero().squeeze(1) if name in self.keep else None
            alive = w.numel() if remaining is None else remaining.numel()
            removable = alive - math.ceil(min_layer_density * w.numel())
            if removable <= 0:
                continue
            score = scores[name].reshape(-1)
            score = score.float().clone() if remaining is None else score[remaining].float()
            if normalize_per_layer:
                scale = score.mean()
                score = score / scale if scale > 0 else torch.zeros_like(score)
            if removable < min(count, alive):
                # a cut this large could take the layer below its floor: only its least salient can go
                score[~lowest(score, removable)] = math.inf
            names.append(name)
            candidates.append(score)
            positions.append(remaining)
        if not candidates or count <= 0:
            return {}
        everything = torch.cat([c.to(candidates[0].device) for c in candidates])
        chosen = lowest(everything, count)
        selection, offset = {}, 0
        for name, score, remaining in zip(names, candidates, positions, strict=True):
            picked = chosen[offset : offset + score.numel()].to(self.weights[name].device)
            offset += score.numel()
            if picked.any():
                selection[name] = picked.nonzero().squeeze(1) if remaining is None else remaining[picked]
        return selection

    # -- cutting and keeping cut ----------------------------------------------------------------------------------

    @torch.no_grad()
    def cut(self, selection: Mapping[str, Tensor], optimizers: Iterable[torch.optim.Optimizer] = ()) -> int:
        """Zero the selected weights, mark them cut, remember them for :meth:`undo_last_cut`, and zero their
        optimizer state (Adam's moments would otherwise pull them back). Returns how many were cut."""
        self.last_cut = {}
        total = 0
        for name, indices in selection.items():
            flat = self.weights[name].view(-1)
            # int32 positions where they fit: the rollback copy costs 8 bytes per cut weight, not 12
            positions = indices.to(torch.int32) if flat.numel() < 2**31 else indices
            self.last_cut[name] = (positions, flat[indices].clone())
            flat[indices] = 0
            self._keep_of(name).view(-1)[indices] = 0
            total += indices.numel()
        zero_state_entries(optimizers, {self.weights[name]: indices for name, indices in selection.items()})
        return total

    def _keep_of(self, name: str) -> Tensor:
        if name not in self.keep:
            self.keep[name] = torch.ones_like(self.weights[name], memory_format=torch.contiguous_format)
        return self.keep[name]

    @torch.no_grad()
    def undo_last_cut(self) -> int:
        """Restore the weights removed by the last cut to their saved values. Returns how many came back."""
        restored = 0
        for name, (positions, values) in self.last_cut.items():
            weight = self.weights[name]
            indices = positions.to(device=weight.device, dtype=torch.long)
            weight.view(-1)[indices] = values.to(weight.device)
            self.keep[name].view(-1)[indices] = 1
            restored += indices.numel()
        self.last_cut = {}
        return restored

    @torch.no_grad()
    def apply(self) -> None:
        """Zero the cut weights again after an optimizer step: one fused multi-tensor kernel, however many layers."""
        if self.keep:
            torch._foreach_mul_([self.weights[n] for n in self.keep], list(self.keep.values()))

    def follow_weights(self) -> None:
        """Move the masks to their weights' devices (the model may have moved since they were made)."""
        for name in self.keep:
            self.keep[name] = self.keep[name].to(self.weights[name].device)
        for name, (positions, values) in self.last_cut.items():
            device = self.weights[name].device
            self.last_cut[name] = (positions.to(device), values.to(device))

    def buffer_bytes(self) -> int:
        """What the masks and the rollback copy hold, in bytes."""
        masks = sum(k.numel() * k.element_size() for k in self.keep.values())
        rollback = sum(p.numel() * p.element_size() + v.numel() * v.element_size() for p, v in self.last_cut.values())
        return masks + rollback

    # -- persistence ----------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "pruned": {name: p.cpu() for name, p in self.pruned.items()},
            "last_cut": {name: (i.clone(), v.clone()) for name, (i, v) in self.last_cut.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = set(self.weights) - set(state["pruned"])
        unexpected = set(state["pruned"]) - set(self.weights)
        if missing or unexpected:
            raise KeyError(
                f"the saved masks do not fit this model: missing {sorted(missing)}, unexpected {sorted(unexpected)}"
            )
        self.keep = {}
        for name, pruned in state["pruned"].items():
            self.pruned[name] = pruned
        self.last_cut = {name: (i, v) for name, (i, v) in state["last_cut"].items()}
        self.follow_weights()
        self.apply()


# float32 bit patterns of non-negative numbers order like the numbers: their top 16 bits are 2**15 ordered buckets
_BUCKET_SHIFT = 16
_INFINITE_BUCKET = 0x7F80  # +inf (and anything above it: NaN) starts here


def lowest(scores: Tensor, count: int) -> Tensor:
    """Boolean mask of the ``count`` lowest finite entries of non-negative float32 ``scores`` (+inf marks entries
    that cannot be chosen; fewer are chosen when fewer are finite), ties broken by position.

    A radix select: a histogram of the values' top 16 bits finds the bucket of the ``count``-th value in a few passes,
    and only that bucket is sorted out exactly; ``kthvalue`` over everything costs as much as ~15 passes.

    Example:
        >>> lowest(torch.tensor([3.0, 0.5, float("inf"), 0.5, 2.0]), 3)
        tensor([False,  True, False,  True,  True])
    """
    buckets = scores.contiguous().view(torch.int32) >> _BUCKET_SHIFT
    counts = torch.bincount(buckets, minlength=_INFINITE_BUCKET + 1).cumsum(0)
    count = min(count, int(counts[_INFINITE_BUCKET - 1]))
    if count <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    bucket = int(torch.searchsorted(counts, count))  # the first bucket that completes the count
    chosen = buckets < bucket
    inside = (buckets == bucket).nonzero().squeeze(1)
    need = count - (int(counts[bucket - 1]) if bucket > 0 else 0)
    values = scores[inside]
    threshold = torch.kthvalue(values, need).values
    below = inside[values < threshold]
    ties = inside[values == threshold]
    chosen[below] = True
    chosen[ties[: need - below.numel()]] = True
    return chosen
