"""The pruning callback's settings as read-only attributes, each read from the one object that holds it.

Every setting lives in one object: what is pruned and how it is ranked in the pruner, the pace and the target in the
controller, when in the window, what paces in the signals. ``RealTimePruningCallback.target_sparsity`` and its kin
read them there (an enum as the string it was given), so that no copy can go stale.
"""

from enum import Enum
from typing import Any


def _held_by(owner: str, name: str) -> property:
    def read(self: Any) -> Any:
        value = getattr(getattr(self, owner), name)
        return value.value if isinstance(value, Enum) else value

    return property(read, doc=f"The `{name}` setting (held by the {owner.strip('_')}).")


class SettingsView:
    """Read-only settings of an object with ``pruner``, ``controller``, ``window`` and ``_signals`` attributes."""

    mode = _held_by("pruner", "mode")
    importance = _held_by("pruner", "importance")
    shrink_when = _held_by("pruner", "shrink_when")
    budget = _held_by("pruner", "budget")
    min_layer_density = _held_by("pruner", "min_layer_density")
    normalize_per_layer = _held_by("pruner", "normalize_per_layer")
    saliency_beta = _held_by("pruner", "saliency_beta")
    saliency_every = _held_by("pruner", "saliency_every")
    parameters = _held_by("pruner", "parameters")
    exclude = _held_by("pruner", "exclude")
    target_sparsity = _held_by("controller", "target_sparsity")
    pace_by = _held_by("controller", "pace_by")
    damage_tolerance = _held_by("controller", "damage_tolerance")
    monitor = _held_by("_signals", "monitor")
    interval = _held_by("window", "interval")
    interval_unit = _held_by("window", "unit")
    start_epoch = _held_by("window", "start_epoch")
    end_epoch = _held_by("window", "end_epoch")
