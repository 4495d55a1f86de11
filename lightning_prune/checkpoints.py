"""Checkpoints of physically shrunk models: resize a full-size module to a checkpoint's shapes, then load it.

A structurally pruned run saves smaller layers than the module's constructor builds. Loading needs the shapes first:
:func:`match_architecture` resizes Conv / Linear / normalisation / recurrent layers to the saved tensors (the values
come from the state dict afterwards), :func:`load_pruned` does both for any module, and the callback installs a
resizing ``on_load_checkpoint`` on the user's module so that ``fit(ckpt_path=...)`` resumes a shrunk run.
"""

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from lightning_prune.layers import CONV_LAYERS, NORM_LAYERS

ModuleT = TypeVar("ModuleT", bound=nn.Module)
_RESIZER = "_lightning_prune_resizer"


def match_architecture(model: nn.Module, state_dict: Mapping[str, Tensor], prefix: str = "") -> list[str]:
    """Resize layers so ``state_dict`` (from a shrunk model) loads into ``model``; return the resized layers' names.

    Only shapes change; the values come from the state dict when it is loaded.

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
        if isinstance(module, nn.RNNBase):
            changed = _resize_recurrent(module, state_dict, key)
        elif isinstance(module, (*CONV_LAYERS, nn.Linear, *NORM_LAYERS)):
            changed = _resize_layer(module, state_dict, key)
        else:
            continue
        if changed:
            resized.append(name)
    return resized


def _replace(module: nn.Module, attr: str, shape: torch.Size) -> None:
    old = getattr(module, attr)
    new = torch.empty(shape, dtype=old.dtype, device=old.device)
    if isinstance(old, nn.Parameter):
        setattr(module, attr, nn.Parameter(new, requires_grad=old.requires_grad))
    else:
        setattr(module, attr, new)


def _resize_layer(module: nn.Module, state_dict: Mapping[str, Tensor], key: str) -> bool:
    weight = state_dict.get(f"{key}weight")
    if weight is None or getattr(module, "weight", None) is None or weight.shape == module.weight.shape:
        return False
    for attr in ("weight", "bias", "running_mean", "running_var"):
        saved = state_dict.get(f"{key}{attr}")
        if saved is not None and getattr(module, attr, None) is not None:
            _replace(module, attr, saved.shape)
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = weight.shape
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        module.num_features = weight.shape[0]
    elif isinstance(module, nn.LayerNorm):
        module.normalized_shape = tuple(weight.shape)
    elif isinstance(module, nn.GroupNorm):
        module.num_channels = weight.shape[0]
    elif isinstance(module, CONV_LAYERS):
        module.out_channels, module.in_channels = weight.shape[0], weight.shape[1] * module.groups
    return True


def _resize_recurrent(rnn: nn.RNNBase, state_dict: Mapping[str, Tensor], key: str) -> bool:
    saved_hh = state_dict.get(f"{key}weight_hh_l0")
    if saved_hh is None or saved_hh.shape == rnn.weight_hh_l0.shape:
        return False
    for param_name in rnn._flat_weights_names:
        saved = state_dict.get(f"{key}{param_name}")
        if saved is not None:
            _replace(rnn, param_name, saved.shape)
    rnn.hidden_size = saved_hh.shape[1]
    rnn._init_flat_weights()
    return True


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
