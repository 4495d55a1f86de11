"""Which layers and weights pruning acts on: the one registry of layer types, the classifier rule, the default choice.

Every other module asks here: the default prunable weights (unstructured and structured), what counts as the final
classifier (the last ``nn.Linear`` in module order: its outputs are the classes and are never cut), which layers own
output channels, and how sparsity is counted (non-zero prunable weights against their number before pruning).
"""

import warnings
from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatch

import torch
from torch import Tensor, nn

CONV_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
# layers with a 2-D (or conv) `weight` whose output channels are rows of it
WEIGHTED_LAYERS = (*CONV_LAYERS, nn.Linear)
RECURRENT_LAYERS = (nn.RNNBase,)
RECURRENT_WEIGHTS = ("weight_ih_l", "weight_hh_l")
ATTENTION_LAYERS = (nn.MultiheadAttention,)
# the projections of an attention layer: packed (query, key and value in one) or separate
ATTENTION_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
# layers (by class name, so that no model library is imported) that are a Linear with a transposed weight, of shape
# (in, out): Hugging Face's Conv1D (GPT-2). Their output channels are the weight's columns.
TRANSPOSED_LINEAR_LAYERS = ("Conv1D",)
# per-channel affine parameters called "weight" that remove none of a layer's multiply-accumulates when zeroed
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
# normalisations whose statistics span channels: a zero channel changes every other channel's output
CROSS_CHANNEL_NORMS = (nn.LayerNorm, nn.GroupNorm)
# modules (by class name, so that no model library is imported) that keep a width in a plain attribute their forward
# reads: attribute -> (parameter, dim) whose size it equals. Structured pruning updates them when channels go.
WIDTH_ATTRIBUTES: dict[str, dict[str, tuple[str, int]]] = {
    # torchvision's VisionTransformer reshapes the patch embedding to `hidden_dim` channels
    "VisionTransformer": {"hidden_dim": ("conv_proj.weight", 0)},
    # Hugging Face's Conv1D: a transposed Linear that reads its widths from nf / nx
    "Conv1D": {"nf": ("weight", 1), "nx": ("weight", 0)},
    # GPT-2's attention splits its fused projection into queries, keys and values `split_size` wide: one per head kept
    "GPT2Attention": {"split_size": ("c_proj.weight", 0)},
}


def is_transposed_linear(module: nn.Module) -> bool:
    """A Linear whose weight is stored transposed, ``(in, out)`` (:data:`TRANSPOSED_LINEAR_LAYERS`)."""
    weight = getattr(module, "weight", None)
    return type(module).__name__ in TRANSPOSED_LINEAR_LAYERS and isinstance(weight, Tensor) and weight.dim() == 2


def is_channel_layer(module: nn.Module) -> bool:
    """A layer that owns output channels: a convolution, a Linear, or a transposed Linear (GPT-2's Conv1D)."""
    return isinstance(module, WEIGHTED_LAYERS) or is_transposed_linear(module)


def classifier_name(model: nn.Module) -> str | None:
    """The final classifier: the last ``nn.Linear`` in module order (None if there is none).

    Example:
        >>> classifier_name(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
        '2'
    """
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return names[-1] if names else None


def default_prunable(model: nn.Module) -> dict[str, nn.Parameter]:
    """Conv*d / Linear weights but the classifier's (and those of transposed Linears, GPT-2's Conv1D), the projections
    of ``nn.MultiheadAttention``, and every ``weight_ih_l*`` / ``weight_hh_l*`` of LSTM/GRU/RNN layers; no biases,
    normalisation layers or embeddings. A weight shared by two modules is listed once. Frozen weights are listed too:
    :func:`prunable_weights` decides about them."""
    classifier = classifier_name(model)
    chosen: dict[str, nn.Parameter] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        if is_channel_layer(module) and module_name != classifier:
            candidates = [("weight", module.weight)]
        elif isinstance(module, RECURRENT_LAYERS):
            candidates = [(n, p) for n, p in module.named_parameters(recurse=False) if n.startswith(RECURRENT_WEIGHTS)]
        elif isinstance(module, ATTENTION_LAYERS):
            candidates = [(n, p) for n, p in module.named_parameters(recurse=False) if n in ATTENTION_WEIGHTS]
        else:
            continue
        for name, weight in candidates:
            if id(weight) not in seen:
                seen.add(id(weight))
                chosen[prefix + name] = weight
    return chosen


def prunable_weights(
    model: nn.Module, parameters: Sequence[str] | None = None, exclude: Sequence[str] | None = None
) -> dict[str, nn.Parameter]:
    """The weights to prune, by parameter name.

    By default :func:`default_prunable` without the frozen weights (``requires_grad=False``: a fine-tuned model's
    backbone, which no optimizer moves, so a cut could never be recovered from), said in one warning with how many
    there were and how to include them; ``parameters`` (glob patterns over parameter names) replaces that choice, frozen
    weights included when a pattern names them, and ``exclude`` patterns remove from it. ``requires_grad`` is read now:
    call this once the trainable set is fixed (the callback does at setup, before the first step).

    Raises:
        ValueError: A ``parameters`` pattern matches nothing, or nothing is left to prune (the message names
            ``exclude`` when the exclusion removed everything).

    Example:
        >>> from lightning_prune.models import LSTMClassifier
        >>> list(prunable_weights(LSTMClassifier(vocab_size=10, embed_dim=4, hidden_size=4)))
        ['lstm.weight_ih_l0', 'lstm.weight_hh_l0', 'lstm.weight_ih_l1', 'lstm.weight_hh_l1']
        >>> list(prunable_weights(nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1)), exclude=["0.*"]))
        Traceback (most recent call last):
        ...
        ValueError: `exclude` ['0.*'] removes every prunable weight ...
    """
    named = dict(model.named_parameters())
    if parameters is None:
        chosen = _trainable_only(default_prunable(model))
    else:
        unmatched = [pattern for pattern in parameters if not any(fnmatch(n, pattern) for n in named)]
        if unmatched:
            raise ValueError(
                f"`parameters` patterns {unmatched} match no parameter of the model; it has {list(named)[:20]}"
            )
        chosen = {n: p for n, p in named.items() if any(fnmatch(n, pattern) for pattern in parameters)}
    if not chosen:
        raise ValueError(
            "RealTimePruningCallback found nothing to prune in this model: by default it prunes the weights of "
            "Conv*d and Linear layers (but the last Linear, the classifier) and of LSTM/GRU/RNN layers. "
            f"Choose weights with `parameters=[...]` (glob patterns over {list(named)[:10]})."
        )
    if exclude:
        kept = {n: p for n, p in chosen.items() if not any(fnmatch(n, pattern) for pattern in exclude)}
        if not kept:
            raise ValueError(
                f"`exclude` {list(exclude)} removes every prunable weight ({list(chosen)[:10]}): nothing is left to "
                "prune. Exclude fewer weights."
            )
        chosen = kept
    return chosen


def _trainable_only(weights: dict[str, nn.Parameter]) -> dict[str, nn.Parameter]:
    """``weights`` without the frozen ones, said in one warning.

    Raises:
        ValueError: Every weight is frozen (the message says how to include them).
    """
    frozen = [name for name, weight in weights.items() if not weight.requires_grad]
    if not frozen:
        return weights
    include = f"name them in `parameters=[...]` (glob patterns, e.g. {frozen[0].rsplit('.', 1)[0] + '.*'!r})"
    if len(frozen) == len(weights):
        raise ValueError(
            f"RealTimePruningCallback found nothing to prune: all {len(frozen)} prunable weight tensors are frozen "
            f"(requires_grad=False), and frozen weights are left out by default. To prune them, {include}."
        )
    shown = ", ".join(repr(n) for n in frozen[:3]) + (f" and {len(frozen) - 3} more" if len(frozen) > 3 else "")
    warnings.warn(
        f"RealTimePruningCallback leaves {len(frozen)} frozen weight tensor(s) out of pruning (requires_grad=False: "
        f"{shown}); to prune them too, {include}.",
        stacklevel=3,
    )
    return {name: weight for name, weight in weights.items() if weight.requires_grad}


def excluded_names(model: nn.Module, exclude: Sequence[str] | None) -> list[str]:
    """The parameters ``exclude`` (glob patterns) matches: never to be cut, whatever they are coupled to."""
    return [n for n, _ in model.named_parameters() if any(fnmatch(n, pattern) for pattern in exclude or ())]


def owner_names(weight_names: Iterable[str]) -> list[str]:
    """The modules that own the given parameters (``"conv1.weight"`` -> ``"conv1"``), in order, once each."""
    owners: list[str] = []
    for name in weight_names:
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        if owner not in owners:
            owners.append(owner)
    return owners


def channel_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every parameter that a channel can own a slice of, by name: what structured mode masks and slices.

    That is every parameter: besides the layers' own, a channel runs through embeddings, normalisations, attention
    projections and parameters held by other modules (a ViT's class token and position embedding)."""
    return dict(model.named_parameters())


@torch.no_grad()
def count_nonzero(weights: Mapping[str, Tensor], names: Iterable[str] | None = None) -> int:
    """Non-zero entries over ``weights`` (only those in ``names`` when given; absent names count nothing)."""
    chosen = weights.values() if names is None else (weights[n] for n in names if n in weights)
    return sum(int(w.count_nonzero()) for w in chosen)


def sparsity(nonzero: int, initial: int) -> float:
    """The one definition of sparsity: the fraction of the prunable weights that are zero or removed, against their
    number before pruning (a physically shrunk layer's removed weights count as pruned)."""
    return 1 - nonzero / initial if initial else 0.0
