"""Test-wide environment: no network, no W&B account, a private datasets cache. Set before anything imports them."""

import os
import tempfile

os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="lightning-prune-hf-cache-"))
os.environ.setdefault("PL_DISABLE_FORK", "1")
