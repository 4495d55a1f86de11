"""Checkpoints of physically shrunk models: resize a full-size module to a checkpoint's shapes, then load it.

A structurally pruned run saves smaller layers than the module's constructor builds. Loading needs the shapes first:
:func:`match_architecture` resizes every parameter and buffer to the saved tensors, and the layers' size attributes
with them (the values come from the state dict afterwards; :func:`fit_attributes` serves physical removal too),
:func:`load_pruned` does both for any module, and the callback installs a resizing ``on_load_checkpoint`` on the
user's module so that ``fit(ckpt_path=...)`` resumes a shrunk run.
"""

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from lightning_prune.layers import CONV_LAYERS, WIDTH_ATTRIBUTES

ModuleT = TypeVar("ModuleT", bound=nn.Module)
_RESIZER = "_lightning_prune_resizer"


def match_architecture(model: nn.Module, state_dict: Mapping[str, Tensor], prefix: str = "") -> list[str]:
    """Resize layers so ``state_dict`` (from a shrunk model) loads into ``model``; return the resized modules' names.

    Every parameter and buffer whose saved shape differs takes that shape, and each resized layer's size attributes
    follow (``out_channels``, ``groups`` of a depthwise convolution, ``embed_dim`` and ``head_dim`` of attention,
    ``hidden_size`` of recurrent layers, ...). Only shapes change; the values come from the state dict when it is
    loaded.

    Example:
        >>> big, small = nn.Linear(8, 4), nn.Linear(8, 2)
        >>> match_architecture(big, small.state_dict())
        ['']
        >>> big.load_state_dict(small.state_dict()); big.out_features
        <All keys matched successfully>
        2
    """
    resized = []
    for name, module in model.named_modules():
        key = f"{prefix}{name}." if name else prefix
        depthwise = is_depthwise(module)
        changed = False
        for attr, tensor in [*module._parameters.items(), *module._buffers.items()]:
            saved = state_dict.get(f"{key}{attr}")
            if tensor is not None and saved is not None and saved.shape != tensor.shape:
                _replace(module, attr, saved.shape)
                changed = True
        if changed:
            fit_attributes(module, depthwise)
            resized.append(name)
    fit_width_attributes(model)
    return resized


def is_depthwise(module: nn.Module) -> bool:
    """A convolution with one filter per input channel: its channels go with its input channels."""
    return (
        isinstance(module, CONV_LAYERS)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


def _replace(module: nn.Module, attr: str, shape: torch.Size) -> None:
    old = getattr(module, attr)
    new = torch.empty(shape, dtype=old.dtype, device=old.device)
    if isinstance(old, nn.Parameter):
        setattr(module, attr, nn.Parameter(new, requires_grad=old.requires_grad))
    else:
        setattr(module, attr, new)


def fit_attributes(module: nn.Module, depthwise: bool = False) -> None:
    """Make a layer's size attributes agree with its (resized) parameters. ``depthwise``: the convolution was
    depthwise before (one filter per input channel), so its ``groups`` follow its channels."""
    weight = getattr(module, "weight", None)
    if isinstance(module, CONV_LAYERS):
        module.out_channels = weight.shape[0]
        if depthwise:
            module.groups = module.in_channels = weight.shape[0]
        else:
            module.in_channels = weight.shape[1] * module.groups
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = weight.shape
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        reference = weight if weight is not None else module.running_mean
        if reference is not None:
            module.num_features = reference.shape[0]
    elif isinstance(module, nn.LayerNorm) and weight is not None:
        module.normalized_shape = (*module.normalized_shape[:-1], weight.shape[-1])
    elif isinstance(module, nn.GroupNorm) and weight is not None:
        module.num_channels = weight.shape[0]
    elif isinstance(module, nn.Embedding):
        module.num_embeddings, module.embedding_dim = weight.shape
    elif isinstance(module, nn.PReLU):
        module.num_parameters = weight.numel()
    elif isinstance(module, nn.MultiheadAttention):
        _fit_attention(module)
    elif isinstance(module, nn.RNNBase):
        module.hidden_size = module.weight_hh_l0.shape[1]
        module.input_size = module.weight_ih_l0.shape[1]
        module._init_flat_weights()


def _fit_attention(attention: nn.MultiheadAttention) -> None:
    """nn.MultiheadAttention's projections are ``embed_dim`` wide inside and out; its heads keep their number."""
    if attention.in_proj_weight is not None:
        attention.embed_dim = attention.in_proj_weight.shape[1]
        attention.kdim = attention.vdim = attention.embed_dim
    else:
        attention.embed_dim = attention.q_proj_weight.shape[0]
        attention.kdim, attention.vdim = attention.k_proj_weight.shape[1], attention.v_proj_weight.shape[1]
    attention.head_dim = attention.embed_dim // attention.num_heads


def fit_width_attributes(model: nn.Module) -> None:
    """Set the plain width attributes of :data:`~lightning_prune.layers.WIDTH_ATTRIBUTES` modules to their
    parameters' sizes (e.g. a VisionTransformer's ``hidden_dim``)."""
    for module in model.modules():
        for attr, (param, dim) in WIDTH_ATTRIBUTES.get(type(module).__name__, {}).items():
            tensor = module.get_parameter(param) if hasattr(module, attr) else None
            if tensor is not None:
                setattr(module, attr, tensor.shape[dim])


def _state_dict_of(checkpoint: Any) -> dict[str, Tensor]:
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
        return dict(checkpoint["state_dict"])
    if isinstance(checkpoint, Mapping) and all(isinstance(v, Tensor) for v in checkpoint.values()):
        return dict(checkpoint)
    raise ValueError("the checkpoint holds neither a Lightning `state_dict` nor a plain state dict of tensors")


def _prefix_for(module: nn.Module, state_dict: Mapping[str, Tensor]) -> str:
    """The key prefix under which exactly ``module``'s state is saved: "" for the module the checkpoint was made of,
    e.g. ``"backbone."`` when a LightningModule's backbone is given."""
    own = set(module.state_dict())
    first = next(iter(own), "")
    for prefix in dict.fromkeys(key[: len(key) - len(first)] for key in state_dict if key.endswith(first)):
        if {key[len(prefix) :] for key in state_dict if key.startswith(prefix)} == own:
            return prefix
    raise ValueError(
        f"the checkpoint's weights do not fit {type(module).__name__}: no part of its keys ({list(state_dict)[:5]} "
        f"...) holds exactly the module's state ({sorted(own)[:5]} ...)"
    )


def load_pruned(module: ModuleT, ckpt_path: str | Path, map_location: Any = "cpu") -> ModuleT:
    """Load a checkpoint of a structurally pruned (shrunk) run into a freshly built, full-size module.

    The module's layers are resized to the checkpoint's shapes, then the weights are loaded; the module is returned.
    Any LightningModule works, and so does a plain ``nn.Module`` that is part of one (its keys are found under their
    prefix, e.g. ``backbone.``). ``ClassificationModule.load_from_checkpoint`` resizes by itself.

    Raises:
        FileNotFoundError: No file at ``ckpt_path``.
        ValueError: The checkpoint's weights do not belong to this module.

    Example:
        >>> import tempfile, os
        >>> small = nn.Sequential(nn.Linear(8, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> path = os.path.join(tempfile.mkdtemp(), "small.ckpt")
        >>> torch.save({"state_dict": small.state_dict()}, path)
        >>> load_pruned(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)), path)[0].out_features
        3
    """
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"`ckpt_path` {str(ckpt_path)!r} is not a file")
    state_dict = _state_dict_of(torch.load(ckpt_path, map_location=map_location, weights_only=False))
    prefix = _prefix_for(module, state_dict)
    match_architecture(module, state_dict, prefix)
    own = {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}
    module.load_state_dict(own, strict=True)
    return module


def install_resize_hook(module: nn.Module) -> None:
    """Make ``module.on_load_checkpoint`` resize shrunk layers before Lightning loads the weights.

    ``fit(ckpt_path=...)`` loads the weights before any callback sees the checkpoint, but after calling the module's
    own hook: wrap that hook (the class's, or one the user set on the instance), remembering what was there.
    """
    current: Callable[[dict], None] = module.on_load_checkpoint
    if getattr(current, _RESIZER, False):
        return
    previous = vars(module).get("on_load_checkpoint")

    def on_load_checkpoint(checkpoint: dict[str, Any]) -> None:
        match_architecture(module, checkpoint["state_dict"])
        current(checkpoint)

    setattr(on_load_checkpoint, _RESIZER, True)
    on_load_checkpoint.previous = previous
    module.on_load_checkpoint = on_load_checkpoint


def remove_resize_hook(module: nn.Module) -> None:
    """Undo :func:`install_resize_hook`: the instance gets back exactly what it had (nothing, or the user's hook)."""
    hook = vars(module).get("on_load_checkpoint")
    if hook is None or not getattr(hook, _RESIZER, False):
        return
    if hook.previous is None:
        del module.on_load_checkpoint
    else:
        module.on_load_checkpoint = hook.previous
