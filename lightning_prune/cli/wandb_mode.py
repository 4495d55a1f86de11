"""W&B without prompts or hangs: decide online / offline before any run starts, and find W&B loggers in a config.

W&B online without a key prompts for one; with a key but no network it hangs for about 100 s. So the mode is decided
first: offline when no key is configured or the server cannot be reached, and the CLI says which.
"""

import netrc
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

WANDB_OFFLINE_MODES = ("offline", "dryrun", "disabled")
DEFAULT_PROJECT = "lightning-prune"


def wandb_api_key_configured() -> bool:
    """Whether W&B would find an API key: ``WANDB_API_KEY`` or an ``api.wandb.ai`` entry in the netrc file."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = os.environ.get("NETRC", str(Path.home() / ".netrc"))
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, PermissionError):
        return False


def wandb_server_reachable(timeout: float = 3.0) -> bool:
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def wandb_offline() -> bool:
    return os.environ.get("WANDB_MODE", "").lower() in WANDB_OFFLINE_MODES


def choose_wandb_mode() -> str | None:
    """Decide online/offline *before* any W&B run starts, so W&B never prompts for a key or hangs on the network.

    Returns the reason for going offline, or None when W&B may log online (or the user already chose a mode).
    """
    if wandb_offline():
        return None
    if not wandb_api_key_configured():
        reason = "no W&B API key is configured"
    elif not wandb_server_reachable():
        reason = "the W&B server cannot be reached"
    else:
        return None
    os.environ["WANDB_MODE"] = "offline"
    return reason


def wandb_logger_configs(logger_config: Any) -> list[Any]:
    """The WandbLogger entries (``class_path`` + ``init_args``) of a ``trainer.logger`` config: one, a list, or none.

    Example:
        >>> from jsonargparse import Namespace
        >>> entry = Namespace(class_path="lightning.pytorch.loggers.WandbLogger", init_args=Namespace(project="p"))
        >>> [e.init_args.project for e in wandb_logger_configs([entry, Namespace(class_path="CSVLogger")])]
        ['p']
    """
    entries = logger_config if isinstance(logger_config, list) else [logger_config]
    return [e for e in entries if hasattr(e, "get") and str(e.get("class_path", "")).endswith("WandbLogger")]


def tag_wandb_run(config: Any) -> None:
    """Tag a W&B run ``pruned`` or ``unpruned`` (unless tags are set) so the dashboard can split the two."""
    for logger in wandb_logger_configs(config.get("trainer", {}).get("logger")):
        init_args = logger.get("init_args")
        if init_args is not None and init_args.get("tags") is None:
            init_args["tags"] = ["pruned" if config.get("pruning") else "unpruned"]
