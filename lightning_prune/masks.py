"""Mask bookkeeping for unstructured pruning: select, cut, keep cut weights at zero, undo the last cut.

No forward pre-hooks and no ``weight_orig`` copies: the weights themselves hold the zeros. What keeps them at zero is
cheap and explicit: the gradients of cut weights are zeroed before each optimizer step (so momentum-based optimizers
cannot move them), the masks are re-applied after it, and the optimizer's per-weight state is zeroed at the cut.
"""

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from lightning_prune.layers import count_nonzero
from lightning_prune.optim import zero_state_entries


class PruningMasks:
    """Masks over a set of named weights; ``True`` marks a weight that was cut.

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
        >>> masks.sparsity()
        0.5
        >>> masks.undo_last_cut()
        2
        >>> w.data
        tensor([[0.1000, 0.9000],
                [0.5000, 0.3000]])
    """

    def __init__(self, weights: Mapping[str, Tensor]) -> None:
        self.weights = dict(weights)
        self.pruned = {name: torch.zeros_like(w, dtype=torch.bool) for name, w in self.weights.items()}
        # flat indices and values of the last cut, per weight, so that a rollback can restore them exactly
        self.last_cut: dict[str, tuple[Tensor, Tensor]] = {}
        self._active: list[str] = []
        self._keep: list[Tensor] = []

    # -- counting, from the weights themselves ---------------------------------------------------------------------

    @property
    def num_weights(self) -> int:
        return sum(w.numel() for w in self.weights.values())

    def sparsity(self) -> float:
        """Fraction of these weights that are exactly zero."""
        return 1 - count_nonzero(self.weights) / self.num_weights

    @torch.no_grad()
    def layer_sparsity(self) -> dict[str, float]:
        return {name: float((w == 0).sum()) / w.numel() for name, w in self.weights.items()}

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
            remaining = (~self.pruned[name]).view(-1).nonzero().squeeze(1)
            removable = remaining.numel() - math.ceil(min_layer_density * w.numel())
            if removable <= 0:
                continue
            score = scores[name].reshape(-1)[remaining].float()
            if normalize_per_layer:
                scale = score.mean()
                score = score / scale if scale > 0 else torch.zeros_like(score)
            if removable < remaining.numel():
                # protect the layer's most salient survivors: they cannot be chosen
                protected = torch.topk(score, remaining.numel() - removable).indices
                score[protected] = math.inf
            names.append(name)
            candidates.append(score)
            positions.append(remaining)
        if not candidates or count <= 0:
            return {}
        everything = torch.cat([c.to(candidates[0].device) for c in candidates])
        count = min(count, int(torch.isfinite(everything).sum()))
        if count == 0:
            return {}
        chosen = _lowest(everything, count)
        selection, offset = {}, 0
        for name, score, remaining in zip(names, candidates, positions, strict=True):
            picked = chosen[offset : offset + score.numel()].to(remaining.device)
            offset += score.numel()
            if picked.any():
                selection[name] = remaining[picked]
        return selection

    # -- cutting and keeping cut ----------------------------------------------------------------------------------

    @torch.no_grad()
    def cut(self, selection: Mapping[str, Tensor], optimizers: Iterable[torch.optim.Optimizer] = ()) -> int:
        """Zero the selected weights, mark them cut, remember them for :meth:`undo_last_cut`, and zero their
        optimizer state (Adam's moments would otherwise pull them back). Returns how many were cut."""
        self.last_cut = {}
        total = 0
        for name, indices in selection.items():
            w = self.weights[name]
            flat = w.view(-1)
            self.last_cut[name] = (indices.clone(), flat[indices].clone())
            flat[indices] = 0
            self.pruned[name].view(-1)[indices] = True
            total += indices.numel()
        zero_state_entries(optimizers, {self.weights[name]: indices for name, indices in selection.items()})
        return total

    @torch.no_grad()
    def undo_last_cut(self) -> int:
        """Restore the weights removed by the last cut to their saved values. Returns how many came back."""
        restored = 0
        for name, (indices, values) in self.last_cut.items():
            self.weights[name].view(-1)[indices] = values.to(self.weights[name].device)
            self.pruned[name].view(-1)[indices] = False
            restored += indices.numel()
        self.last_cut = {}
        return restored

    def follow_weights(self) -> None:
        """Move the masks to their weights' devices (the model may have moved since they were made)."""
        for name, weight in self.weights.items():
            self.pruned[name] = self.pruned[name].to(weight.device)
            if name in self.last_cut:
                self.last_cut[name] = tuple(t.to(weight.device) for t in self.last_cut[name])
        self._keep = [(~self.pruned[n]).to(self.weights[n].dtype) for n in self._active]

    def refresh(self) -> None:
        """Recompute which weights have cut entries (the per-step work touches only those)."""
        self._active = [name for name, p in self.pruned.items() if bool(p.any())]
        # multiplying by a mask of the weight's own dtype is ~10x faster than by a bool mask (no conversion) or
        # masked_fill (no fused multi-tensor kernel); it costs one weight-sized buffer per pruned tensor
        self._keep = [(~self.pruned[n]).to(self.weights[n].dtype) for n in self._active]

    @torch.no_grad()
    def mask_gradients(self) -> None:
        """Zero the gradients of cut weights: one fused multi-tensor kernel, however many layers."""
        pairs = [(self.weights[n].grad, keep) for n, keep in zip(self._active, self._keep, strict=True)]
        pairs = [(grad, keep) for grad, keep in pairs if grad is not None]
        if pairs:
            torch._foreach_mul_([g for g, _ in pairs], [k for _, k in pairs])

    @torch.no_grad()
    def apply(self) -> None:
        """Zero the cut weights again (after an optimizer step), fused like :meth:`mask_gradients`."""
        if self._active:
            torch._foreach_mul_([self.weights[n] for n in self._active], self._keep)

    # -- persistence ----------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "pruned": {name: p.clone() for name, p in self.pruned.items()},
            "last_cut": {name: (i.clone(), v.clone()) for name, (i, v) in self.last_cut.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = set(self.pruned) - set(state["pruned"])
        unexpected = set(state["pruned"]) - set(self.pruned)
        if missing or unexpected:
            raise KeyError(
                f"the saved masks do not fit this model: missing {sorted(missing)}, unexpected {sorted(unexpected)}"
            )
        for name, pruned in state["pruned"].items():
            if pruned.shape != self.pruned[name].shape:
                raise ValueError(
                    f"saved mask {name!r} has shape {tuple(pruned.shape)}, the weight {tuple(self.pruned[name].shape)}"
                )
            self.pruned[name] = pruned.to(self.weights[name].device)
        self.last_cut = {name: (i, v) for name, (i, v) in state["last_cut"].items()}
        self.refresh()
        self.apply()


def _lowest(scores: Tensor, count: int) -> Tensor:
    """Boolean mask of exactly ``count`` lowest entries (ties broken by position), in O(n)."""
    threshold = torch.kthvalue(scores, count).values
    below = scores < threshold
    ties = (scores == threshold).nonzero().squeeze(1)
    below[ties[: count - int(below.sum())]] = True
    return below
