"""Single weights, lowest saliency first, globally across layers (``masks.py``)."""

from torch import Tensor

from lightning_prune.importance import Saliency
from lightning_prune.masks import PruningMasks
from lightning_prune.pruners.base import Pruner


class UnstructuredPruner(Pruner):
    """Single weights, lowest saliency first, globally across layers (normalised per layer unless told not to)."""

    def _build_state(self) -> None:
        named = dict(self.module.named_parameters())
        weights = {name: named[name] for name in self.prunable}
        self.masks = PruningMasks(weights)
        self.saliency = Saliency(weights, self.importance, self.saliency_beta, self.saliency_every)

    def select(self, count: int) -> dict[str, Tensor]:
        return self.masks.select(self.saliency.scores(), count, self.min_layer_density, self.normalize_per_layer)
