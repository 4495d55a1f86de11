"""`pip install lightning-prune` installs the callback alone: it prunes a model with none of the experiment lab
(data sets, the CLI, W&B, statistics, plots) and, in unstructured mode, without torch-pruning."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the `experiments` extra (setup.cfg): none of it may be imported by the callback
EXPERIMENT_MODULES = ["datasets", "torchvision", "tokenizers", "wandb", "jsonargparse", "rich", "scipy", "matplotlib",
                      "pandas"]  # fmt: skip
# in the `dev` extra only; torchmetrics imports transformers when it finds it, and it needs tokenizers
DEV_MODULES = ["transformers", "timm"]

PRUNE_A_MODEL = textwrap.dedent("""
    import sys
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from lightning_prune import RealTimePruningCallback

    class Net(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    data = DataLoader(TensorDataset(torch.randn(64, 8), torch.randint(0, 2, (64,))), batch_size=16)
    pruning = RealTimePruningCallback(target_sparsity=0.5)
    trainer = L.Trainer(max_epochs=3, callbacks=[pruning], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(Net(), data)
    assert abs(pruning.sparsity - 0.5) < 1e-3, pruning.sparsity
    imported = sorted(name for name in FORBIDDEN if name in sys.modules)
    assert not imported, f"the callback imported {imported}"
    print("pruned", pruning.sparsity)
""")


def _blocking(names: list[str]) -> str:
    """A preamble under which ``names`` are not installed, as far as any import or ``find_spec`` can tell (Lightning
    and torchmetrics import what they find of rich, scipy, matplotlib and torchvision)."""
    return textwrap.dedent(f"""
        import importlib.machinery, sys
        FORBIDDEN = {names!r}

        class WithoutThem(importlib.machinery.PathFinder):
            @classmethod
            def find_spec(cls, name, path=None, target=None):
                if name.split(".")[0] in FORBIDDEN:
                    return None
                return super().find_spec(name, path, target)

            @classmethod
            def find_distributions(cls, *args, **kwargs):  # what importlib.metadata (and RequirementCache) read
                for found in super().find_distributions(*args, **kwargs):
                    if found.metadata["Name"].lower().replace("-", "_") not in FORBIDDEN:
                        yield found

        sys.meta_path = [WithoutThem if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
    """)


def test_the_callback_prunes_with_no_experiment_dependency_and_unstructured_without_torch_pruning():
    script = _blocking([*EXPERIMENT_MODULES, *DEV_MODULES, "torch_pruning"]) + PRUNE_A_MODEL
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pruned 0.5" in done.stdout


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_fresh_venv_without_extras_installs_what_the_callback_needs_and_prunes(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # the CPU build of torch on this machine's disk (a plain `torch` would fetch a CUDA build of several GB)
    subprocess.run([*pip, "torch==2.13.0"], check=True, timeout=600, env=env)
    subprocess.run([*pip, str(ROOT)], check=True, timeout=600, env=env)
    python = str(venv / "bin" / "python")
    absent = subprocess.run([python, "-c", f"import importlib.util as u; print([m for m in {EXPERIMENT_MODULES!r} "
                             "if u.find_spec(m)])"], capture_output=True, text=True, env=env, cwd=tmp_path)  # fmt: skip
    assert absent.stdout.strip() == "[]", f"installed without being asked for: {absent.stdout}"
    script = f"FORBIDDEN = {EXPERIMENT_MODULES!r}\n" + PRUNE_A_MODEL
    done = subprocess.run([python, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    command = subprocess.run([str(venv / "bin" / "lightning-prune"), "fit"], capture_output=True, text=True, env=env)
    assert command.returncode == 2 and "pip install 'lightning-prune[experiments]'" in command.stderr
