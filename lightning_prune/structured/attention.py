"""Attention heads of transformer layers that name their projections: whole heads, our own groups.

torch-pruning follows a projection's channels through the attention arithmetic by index mappings: through a rotary
embedding (which slices each head in halves and concatenates them again) and through grouped-query attention's
``repeat_kv`` its search never ends (``search.py`` bounds it), and where it does end it couples the query, key and
value channels without the heads, so removing any of them breaks the reshape into heads. So, as for recurrent layers,
heads get groups of their own, recognised by the names of the projections (Hugging Face's Llama / Mistral / Qwen,
BERT, DistilBERT and GPT-2 families):

- a unit is one key/value head with the query heads that read it (grouped-query attention: ``num_heads /
  num_key_value_heads`` query heads; one query head otherwise): its rows of the query, key and value projections (and
  their biases), and the output projection's columns of its query heads;
- the head width never changes, so nothing a forward reads from an attribute (``head_dim``, the rotary embedding's
  frequencies, the scaling) changes either; the number of heads is read from the projections' widths (``view(...,
  -1, head_dim)``), and GPT-2's ``split_size`` follows its output projection (``layers.WIDTH_ATTRIBUTES``).

Masking a unit zeroes its values (and queries and keys): its heads output exactly zero, which is what removing them
computes. Each group is still checked by doing (``verify.py``) like every other group.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_prune.layers import is_transposed_linear
from lightning_prune.structured.groups import ChannelGroup, Member, SkippedGroup

# separate projections: (queries, keys, values, output); the output path is relative to the attention module, ".."
# being its parent (BERT's output projection is its sibling `output.dense`)
SEPARATE_PROJECTIONS = (
    ("q_proj", "k_proj", "v_proj", "o_proj"),  # Llama, Mistral, Qwen, Phi-3 ...
    ("q_lin", "k_lin", "v_lin", "out_lin"),  # DistilBERT
    ("query", "key", "value", "../output.dense"),  # BERT, RoBERTa, ELECTRA ...
)
# one fused projection, [queries | keys | values] along its outputs, then the output projection: GPT-2
FUSED_PROJECTIONS = (("c_attn", "c_proj"),)
# where the width of one head is kept
HEAD_WIDTH_ATTRIBUTES = ("head_dim", "attention_head_size")


@dataclass
class Projection:
    """One block of a projection's outputs: ``width`` outputs from ``offset`` on, of the layer called ``layer``."""

    layer: str
    offset: int
    width: int


@dataclass
class HeadLayout:
    """An attention layer's heads: where its queries, keys and values come from, and which layer reads its heads."""

    name: str
    queries: Projection
    keys: Projection
    values: Projection
    output: str
    head_width: int

    @property
    def query_heads(self) -> int:
        return self.queries.width // self.head_width

    @property
    def kv_heads(self) -> int:
        return self.keys.width // self.head_width


def _relative(name: str, path: str) -> str:
    parts = name.split(".") if name else []
    while path.startswith("../"):
        parts, path = parts[:-1], path[3:]
    return ".".join([*parts, path]) if parts else path


def _out_width(layer: nn.Module) -> int:
    return layer.weight.shape[1] if is_transposed_linear(layer) else layer.weight.shape[0]


def _projection_layer(modules: dict[str, nn.Module], name: str) -> nn.Module | None:
    layer = modules.get(name)
    return layer if isinstance(layer, nn.Linear) or (layer is not None and is_transposed_linear(layer)) else None


def head_layouts(model: nn.Module) -> list[HeadLayout]:
    """The attention layers of ``model`` whose heads can be told from the names of their projections."""
    modules = dict(model.named_modules())
    layouts = []
    for name, module in modules.items():
        width = next((getattr(module, a) for a in HEAD_WIDTH_ATTRIBUTES if isinstance(getattr(module, a, None), int)),
                     None)  # fmt: skip
        if not width:
            continue
        prefix = f"{name}." if name else ""
        for q, k, v, out in SEPARATE_PROJECTIONS:
            layers = [_projection_layer(modules, prefix + p) for p in (q, k, v)]
            output = _relative(name, out)
            if all(layers) and _projection_layer(modules, output) is not None:
                q_width, k_width, v_width = (_out_width(layer) for layer in layers)
                layouts.append(HeadLayout(name, Projection(prefix + q, 0, q_width), Projection(prefix + k, 0, k_width),
                                          Projection(prefix + v, 0, v_width), output, width))  # fmt: skip
        for fused, out in FUSED_PROJECTIONS:
            layer, output = _projection_layer(modules, prefix + fused), _projection_layer(modules, prefix + out)
            if layer is not None and output is not None and _out_width(layer) % 3 == 0:
                third = _out_width(layer) // 3
                blocks = [Projection(prefix + fused, i * third, third) for i in range(3)]
                layouts.append(HeadLayout(name, *blocks, prefix + out, width))
    return [layout for layout in layouts if _consistent(layout)]


def _consistent(layout: HeadLayout) -> bool:
    """Whole heads of one width; keys as wide as values; every key/value head read by as many query heads."""
    widths = (layout.queries.width, layout.keys.width, layout.values.width)
    return (
        all(w % layout.head_width == 0 and w > 0 for w in widths)
        and layout.keys.width == layout.values.width
        and layout.query_heads % layout.kv_heads == 0
    )


def head_layers(layouts: Sequence[HeadLayout]) -> set[str]:
    """The projections whose outputs are heads: torch-pruning must not search their channels."""
    return {p.layer for layout in layouts for p in (layout.queries, layout.keys, layout.values)}


def head_groups(
    model: nn.Module, layouts: Sequence[HeadLayout], names: dict[int, str]
) -> tuple[list[ChannelGroup], list[SkippedGroup]]:
    """One group per attention layer: its channels are the query dimensions, bound into units of one key/value head
    with its query heads."""
    modules = dict(model.named_modules())
    groups, skipped = [], []
    for layout in layouts:
        if layout.kv_heads < 2:
            producers = [layout.queries.layer, layout.keys.layer, layout.values.layer]
            reason = "it has a single key/value head, which every query head reads: no head can go"
            skipped.append(SkippedGroup(layout.name, list(dict.fromkeys(producers)), reason))
            continue
        groups.append(_head_group(modules, layout, names))
    return groups, skipped


def _head_group(modules: dict[str, nn.Module], layout: HeadLayout, names: dict[int, str]) -> ChannelGroup:
    width, per_kv = layout.head_width, layout.query_heads // layout.kv_heads
    size = layout.queries.width
    channels = torch.arange(size)
    # key/value dimension d of head h belongs to the unit of query head h * per_kv: its channel h * per_kv * width + d
    kv = torch.arange(layout.keys.width)
    kv_channels = (kv // width) * per_kv * width + kv % width
    members: list[Member] = []
    for projection, owned in ((layout.queries, channels), (layout.keys, kv_channels), (layout.values, kv_channels)):
        members += _rows(modules[projection.layer], projection, owned, names)
    output = modules[layout.output]
    members.append(Member(names[id(output.weight)], 0 if is_transposed_linear(output) else 1, channels, False))
    units = channels // width // per_kv
    producers = list(dict.fromkeys(p.layer for p in (layout.queries, layout.keys, layout.values)))
    return ChannelGroup(f"{layout.name}.heads", size, members, modules=producers, units=units)


def _rows(layer: nn.Module, projection: Projection, channels: Tensor, names: dict[int, str]) -> list[Member]:
    """The slices of ``projection``'s outputs (weight and bias) that compute the given channels."""
    total = _out_width(layer)
    positions = projection.offset + torch.arange(projection.width)
    whole = projection.offset == 0 and projection.width == total
    members = [Member(names[id(layer.weight)], 1 if is_transposed_linear(layer) else 0, channels, True,
                      None if whole else positions)]  # fmt: skip
    if getattr(layer, "bias", None) is not None:
        members.append(Member(names[id(layer.bias)], 0, channels, True, None if whole else positions))
    return members
