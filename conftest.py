"""Test-wide environment: no network, no W&B account, a private datasets cache. Set before anything imports them."""

import atexit
import os
import shutil
import tempfile

os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
if "HF_DATASETS_CACHE" not in os.environ:
    # a cache of our own per session, removed at exit: one left behind per run filled the disk of a long-lived machine
    os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="lightning-prune-hf-cache-")
    atexit.register(shutil.rmtree, os.environ["HF_DATASETS_CACHE"], ignore_errors=True)
os.environ.setdefault("PL_DISABLE_FORK", "1")
