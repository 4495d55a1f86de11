"""The callback dropped into model libraries nobody here wrote: timm and Hugging Face transformers, both modes.

Every model is built from a config with random initialisation (no download), tiny (32x32 images, 12 tokens, hidden
width 32), on one CPU thread; each case has its own time limit, so a hang fails the case instead of stalling the
suite (a Llama used to spin 40 minutes in torch-pruning's group search at the first batch). Each trains four steps:
epoch 0 cuts half the prunable weights, epoch 1 recovers, structured mode removes the cut channels at its end. What
a user relies on is checked: training completes, ``cb.sparsity`` is what the weights show over every default
prunable weight, the target is reached (structured: within one group's resolution), cut weights stay zero before
every step, nothing non-finite is logged, and the export is smaller and computes what the pruned model computes.
"""

import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_prune import RealTimePruningCallback
from lightning_prune.layers import classifier_name, default_prunable
from lightning_prune.structured import default_roots, plan
from lightning_prune.structured.tracing import layer_groups, trace

from helpers import (
    Classifier,
    ZeroChecker,
    assert_export_computes_the_same,
    assert_logs_finite,
    coarsest_step,
    dense_prunable_count,
    measured_sparsity,
)

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

TARGET = 0.5
VOCAB = 100


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Logits(nn.Module):
    """A Hugging Face model called as a user's LightningModule calls it: token ids in, logits out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).logits


def timm_model(name: str, **settings) -> nn.Module:
    return timm.create_model(name, pretrained=False, num_classes=10, **settings)


def tiny_vit() -> nn.Module:
    return timm_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=4)


def bert() -> nn.Module:
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=32, num_labels=2)  # fmt: skip
    return Logits(transformers.BertForSequenceClassification(config))


def distilbert() -> nn.Module:
    config = transformers.DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                           max_position_embeddings=32, num_labels=2)  # fmt: skip
    return Logits(transformers.DistilBertForSequenceClassification(config))


def gpt2() -> nn.Module:
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32, num_labels=2,
                                     pad_token_id=0, bos_token_id=1, eos_token_id=1)  # fmt: skip
    return Logits(transformers.GPT2ForSequenceClassification(config))


def llama(kv_heads: int) -> nn.Module:
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=32,
                                      num_labels=2, pad_token_id=0, bos_token_id=1, eos_token_id=1)  # fmt: skip
    return Logits(transformers.LlamaForSequenceClassification(config))


def images(count: int = 8) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(count, 3, 32, 32, generator=generator), torch.randint(0, 10, (count,)))
    return DataLoader(data, batch_size=4)


def tokens(count: int = 8, length: int = 12) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    text = torch.randint(1, VOCAB, (count, length), generator=generator)
    return DataLoader(TensorDataset(text, text[:, 0] % 2), batch_size=4)


# name -> (backbone, data, time limit in seconds per case)
CASES = {
    "timm_convnext_atto": (lambda: timm_model("convnext_atto"), images, 60),
    "timm_regnetx_002": (lambda: timm_model("regnetx_002"), images, 60),
    "timm_resnet18d": (lambda: timm_model("resnet18d"), images, 90),
    "timm_vit": (lambda: tiny_vit(), images, 60),
    "timm_mobilenetv3_small_050": (lambda: timm_model("mobilenetv3_small_050"), images, 60),
    "hf_bert": (bert, tokens, 60),
    "hf_distilbert": (distilbert, tokens, 60),
    "hf_gpt2": (gpt2, tokens, 60),
    "hf_llama_gqa": (lambda: llama(kv_heads=2), tokens, 60),
    "hf_llama": (lambda: llama(kv_heads=4), tokens, 60),
}
# what structured mode leaves out of each model, by a module path its setup warning names
LEFT_OUT = {"timm_vit": ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]}


def fit(
    case: str, mode: str, tmp_path, **settings
) -> tuple[Classifier, RealTimePruningCallback, ZeroChecker, list[str], str]:
    build, data, _ = CASES[case]
    L.seed_everything(0)
    module = Classifier(build())
    pruning = RealTimePruningCallback(mode=mode, target_sparsity=TARGET, initial_ratio=0.3, max_ratio=0.5,
                                      end_epoch=1, **settings)  # fmt: skip
    checker = ZeroChecker(pruning)
    logger = CSVLogger(tmp_path, name=case)
    trainer = L.Trainer(max_epochs=2, logger=logger, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1, log_every_n_steps=1,
                        callbacks=[pruning, checker])  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, data())
    return module, pruning, checker, [str(w.message) for w in caught], logger.log_dir


def cases_with_limits():
    return [pytest.param(case, mode, marks=pytest.mark.timeout(limit), id=f"{case}-{mode}")
            for case, (_, _, limit) in CASES.items() for mode in ("unstructured", "structured")]  # fmt: skip


@pytest.mark.parametrize(("case", "mode"), cases_with_limits())
def test_a_third_party_model_is_pruned_to_the_target_and_exports(case, mode, tmp_path):
    dense = Classifier(CASES[case][0]())
    module, pruning, checker, said, log_dir = fit(case, mode, tmp_path)

    # the target and cb.sparsity count the same weights in both modes: every default prunable weight
    assert pruning.pruner.initial_weights == dense_prunable_count(dense)
    assert pruning.sparsity == pytest.approx(measured_sparsity(module, dense_prunable_count(dense)), abs=1e-9)
    resolution = coarsest_step(pruning) if mode == "structured" else 0.0
    assert pruning.sparsity == pytest.approx(TARGET, abs=max(resolution, 1e-3)), pruning.history
    for path in LEFT_OUT.get(case, []) if mode == "structured" else []:
        assert any(f"'backbone.{path}'" in message and "unpruned" in message for message in said), said
    assert checker.checked > 0
    assert_logs_finite(log_dir)
    batch = next(iter(CASES[case][1]()))
    assert_export_computes_the_same(pruning, module, batch, lambda m, b: m(b[0]),
                                    sum(p.numel() for p in dense.parameters()))  # fmt: skip


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kv_heads", [2, 4])
def test_llama_loses_whole_key_value_groups_with_their_query_heads_and_keeps_its_rotary_embedding(kv_heads, tmp_path):
    case = "hf_llama_gqa" if kv_heads == 2 else "hf_llama"
    # only the attention projections are to be pruned: heads are all there is to cut
    module, pruning, _, said, _ = fit(case, "structured", tmp_path, parameters=["*self_attn.[qkv]_proj.weight"])
    llama_model = module.backbone.model.model
    head_dim, per_kv = 8, 4 // kv_heads
    attention = [layer.self_attn for layer in llama_model.layers]
    # whole heads: every projection a multiple of the head width, as many query heads per key/value head as before
    for layer in attention:
        assert layer.q_proj.out_features % head_dim == 0 and layer.k_proj.out_features % head_dim == 0
        assert layer.k_proj.out_features == layer.v_proj.out_features
        assert layer.q_proj.out_features == per_kv * layer.k_proj.out_features == layer.o_proj.in_features
        assert layer.head_dim == head_dim and layer.num_key_value_groups == per_kv
    assert all(layer.q_proj.out_features < 32 for layer in attention), "no head was removed"
    assert pruning.sparsity == pytest.approx(TARGET, abs=coarsest_step(pruning))
    # the rotary embedding computes for the same head width
    assert llama_model.rotary_emb.inv_freq.shape == (head_dim // 2,)
    assert not [m for m in said if "unpruned" in m], said


@pytest.mark.timeout(60)
def test_llamas_hidden_stream_shrinks_as_one_group_with_its_rms_norms(tmp_path):
    module, _, _, said, _ = fit("hf_llama_gqa", "structured", tmp_path)
    llama_model = module.backbone.model.model
    width = llama_model.embed_tokens.embedding_dim
    assert width < 32 and llama_model.norm.weight.shape == (width,)
    for layer in llama_model.layers:
        assert layer.input_layernorm.weight.shape == layer.post_attention_layernorm.weight.shape == (width,)
        assert layer.self_attn.q_proj.in_features == layer.mlp.up_proj.in_features == width
        assert layer.self_attn.o_proj.out_features == layer.mlp.down_proj.out_features == width
    assert module.backbone.model.score.in_features == width
    assert not [m for m in said if "unpruned" in m], said


@pytest.mark.timeout(60)
def test_gpt2s_conv1d_layers_are_prunable_by_default_and_shrink_by_their_columns(tmp_path):
    backbone = gpt2()
    assert {n for n in default_prunable(backbone) if n.startswith("model.transformer.h.0.")} == {
        f"model.transformer.h.0.{layer}.weight" for layer in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    }
    # the hidden units of the MLPs and the heads only: what Conv1D's columns hold
    module, pruning, _, said, _ = fit("hf_gpt2", "structured", tmp_path, parameters=["*c_fc.weight", "*c_attn.weight"])
    block = module.backbone.model.transformer.h[0]
    # Conv1D's weight is (in, out): its output columns went, and its widths follow
    assert block.mlp.c_fc.weight.shape == (block.mlp.c_fc.nx, block.mlp.c_fc.nf) and block.mlp.c_fc.nf < 128
    # whole heads: the fused projection keeps queries, keys and values of as many heads, split_size wide each
    assert block.attn.c_attn.nf == 3 * block.attn.split_size and block.attn.split_size % block.attn.head_dim == 0
    assert block.attn.c_proj.nx == block.attn.split_size
    assert pruning.sparsity == pytest.approx(TARGET, abs=coarsest_step(pruning))
    assert not [m for m in said if "unpruned" in m], said


@pytest.mark.timeout(60)
def test_torch_prunings_endless_search_on_rotary_attention_is_bounded_and_named():
    """Left to torch-pruning, the channels of a Llama's projections are searched forever (its rotary embedding
    slices each head in halves and concatenates them again): the bound stops each such search, and its group is left
    out with the bound named, while the other groups are found."""
    model = llama(kv_heads=2)
    traced = trace(model, torch.randint(1, VOCAB, (2, 8)))
    groups, skipped = layer_groups(model, traced, lambda producing: True, classifier_name(model))
    endless = {s.name: s.reason for s in skipped if "MAX_REVISITS" in s.reason}
    assert "model.model.layers.0.self_attn.q_proj" in endless and "model.model.layers.1.self_attn.k_proj" in endless
    assert any(g.name.endswith("mlp.up_proj") for g in groups)


@pytest.mark.timeout(120)
def test_efficientvit_is_planned_in_bounded_time_and_what_it_leaves_out_is_named():
    model = timm_model("efficientvit_m0", img_size=32)
    found = plan(model, [torch.randn(2, 3, 32, 32)], default_roots(model), classifier_name(model))
    assert found.groups and found.skipped
    assert all(s.reason and s.modules for s in found.skipped)


@pytest.mark.timeout(60)
def test_a_llama_with_one_key_value_head_keeps_its_heads_and_says_why():
    model = llama(kv_heads=1)
    found = plan(model, [torch.randint(1, VOCAB, (2, 8))], default_roots(model), classifier_name(model))
    reasons = {s.name: s.reason for s in found.skipped}
    assert "single key/value head" in reasons["model.model.layers.0.self_attn"]
    assert not any(g.name.endswith(".heads") for g in found.groups)
    assert any(g.name.endswith("mlp.up_proj") for g in found.groups)
