"""Structured pruning drops in anywhere: common architectures are pruned exactly, what cannot be is left out by name.

For each architecture: mask a different subset of channels in every group (as the groups' rules allow), export the
compact model, and check that it is smaller, computes what the masked model computes, and that a freshly built
full-size model takes its shapes and weights. Then a few short fits, and the edges: `exclude`, nothing to prune,
the sparsity of a GRU before any cut.
"""

import re
import warnings

import lightning as L
import pytest
import torch
import torchvision
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos import Transformer
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_prune import RealTimePruningCallback
from lightning_prune.checkpoints import load_pruned, match_architecture
from lightning_prune.inputs import as_tuple
from lightning_prune.layers import classifier_name, default_prunable
from lightning_prune.structured import compact_copy, default_roots, mask_channels, plan

from helpers import quiet_trainer

VOCAB = 50


class TextTransformer(nn.Module):
    """Embedding, a batch-first nn.TransformerEncoder (padding masked: in eval mode it runs on nested tensors), mean
    over tokens, a linear classifier."""

    def __init__(self, dim: int = 16, heads: int = 2, layers: int = 2, classes: int = 3) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.fc = nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        padding = tokens == 0
        encoded = self.encoder(self.embedding(tokens), src_key_padding_mask=padding)
        return self.fc(encoded.masked_fill(padding.unsqueeze(-1), 0.0).mean(dim=1))


class GRUClassifier(nn.Module):
    def __init__(self, hidden: int = 12, classes: int = 3) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, 8)
        self.gru = nn.GRU(8, hidden, num_layers=2, batch_first=True)
        self.fc = nn.Linear(hidden, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        _, hidden = self.gru(self.embedding(tokens))
        return self.fc(hidden[-1])


class BiLSTMClassifier(nn.Module):
    """Two bidirectional layers; the classifier reads both directions' last states."""

    def __init__(self, hidden: int = 12, classes: int = 3) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, 8)
        self.lstm = nn.LSTM(8, hidden, num_layers=2, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * hidden, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(self.embedding(tokens))
        return self.fc(torch.cat([hidden[-2], hidden[-1]], dim=1))


class ProjectedLSTM(nn.Module):
    """An LSTM with projections (not prunable structurally), optionally followed by a prunable Linear."""

    def __init__(self, hidden_layer: bool) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, 8)
        self.lstm = nn.LSTM(8, 12, proj_size=4, batch_first=True)
        self.hidden = nn.Sequential(nn.Linear(4, 16), nn.ReLU()) if hidden_layer else nn.Identity()
        self.fc = nn.Linear(16 if hidden_layer else 4, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        output, _ = self.lstm(self.embedding(tokens))
        return self.fc(self.hidden(output.mean(dim=1)))


def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def tokens() -> torch.Tensor:
    """Two sequences of 7 tokens, the second padded (token 0) after 4."""
    batch = torch.randint(1, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
    batch[1, 4:] = 0
    return batch


def tiny_vit() -> nn.Module:
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=10
    )


def shuffled(name: str) -> bool:
    # the outputs of ShuffleNetV2's branches are concatenated and shuffled; a stage's first depthwise convolution
    # reads (and is tied to) the shuffled channels of the stage before
    return name.endswith(("branch1.2", "branch2.5", "branch1.0"))


# name: (builder, inputs, which producing layers are left out, and a word the reason holds)
ARCHITECTURES = {
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), images, None),
    "mobilenet_v3_small": (lambda: torchvision.models.mobilenet_v3_small(num_classes=10), images, None),
    "efficientnet_b0": (lambda: torchvision.models.efficientnet_b0(num_classes=10), images, None),
    "shufflenet_v2_x0_5": (
        lambda: torchvision.models.shufflenet_v2_x0_5(num_classes=10),
        images,
        (shuffled, "shuffle"),
    ),
    "vit": (tiny_vit, images, None),
    "transformer_encoder": (TextTransformer, tokens, None),
    # the demo adds a fixed positional encoding (a plain tensor) to the embedding stream: that stream stays whole
    "demo_transformer": (
        lambda: Transformer(vocab_size=VOCAB, ninp=16, nhead=2, nhid=32, nlayers=1),
        lambda: (tokens(), tokens()),
        (lambda name: name == "embedding", "fails once its channels are removed"),
    ),
    "gru": (GRUClassifier, tokens, None),
    "bidirectional_lstm": (BiLSTMClassifier, tokens, None),
}


def call(model: nn.Module, inputs) -> torch.Tensor:
    return model(*inputs) if isinstance(inputs, tuple) else model(inputs)


def close(a: torch.Tensor, b: torch.Tensor, relative: float = 1e-5) -> bool:
    return float((a - b).abs().max()) <= relative * float(a.abs().max())


@torch.no_grad()
def awake(model: nn.Module) -> nn.Module:
    """A zero-initialised classifier (ViT's) would hide every difference: random values instead."""
    for param in model.parameters():
        if not param.any():
            param.normal_()
    return model.eval()


def pick_channels(groups, seed: int = 0) -> dict[str, torch.Tensor]:
    """A different subset of every group: about half of each class's units (every class as many, every tied group
    as many as the first of its tie)."""
    generator = torch.Generator().manual_seed(seed)
    chosen, per_tie = {}, {}
    for group in groups:
        units, classes = group.unit_of(), group.class_of()
        per_class = [torch.unique(units[classes == c]) for c in range(int(classes.max()) + 1)]
        count = per_tie.get(group.tie) if group.tie else None
        if count is None:
            count = min(len(u) for u in per_class) // 2
        if group.tie:
            per_tie[group.tie] = count
        picks = [u[torch.randperm(len(u), generator=generator)[:count]] for u in per_class]
        chosen[group.name] = torch.isin(units, torch.cat(picks)).nonzero().squeeze(1)
    return chosen


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_masked_channels_are_removed_exactly_and_reload_into_a_fresh_model(name, tmp_path):
    build, make_inputs, left_out = ARCHITECTURES[name]
    torch.manual_seed(0)
    model, inputs = awake(build()), make_inputs()
    found = plan(model, [inputs], default_roots(model), classifier_name(model))
    assert found.groups and found.target == ""
    skipped = [s for s in found.skipped]
    if left_out is None:
        assert skipped == []
    else:
        is_left_out, word = left_out
        assert skipped and all(any(is_left_out(m) for m in s.modules) and word in s.reason for s in skipped)
    mask_channels(model, found.groups, pick_channels(found.groups))
    with torch.no_grad():
        masked = call(model, inputs)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            compact = compact_copy(model, inputs)
        compact_output = call(compact.eval(), inputs)
    # (d) one warning per group left out, naming its layers
    messages = [str(w.message) for w in caught if "structured pruning leaves" in str(w.message)]
    assert len(messages) == len(skipped)
    assert all(any(repr(m) in text for text in messages) for s in skipped for m in s.modules[:6])
    # (a) smaller, (b) computes what the masked model computes
    assert sum(p.numel() for p in compact.parameters()) < sum(p.numel() for p in model.parameters())
    assert close(masked, compact_output)
    # after removal no hook is left on the shrunk layers
    assert not any(m._forward_hooks for m in compact.modules())
    # (c) a fresh full-size model takes the shapes and weights, from a state dict or a saved checkpoint
    fresh = build().eval()
    match_architecture(fresh, compact.state_dict())
    fresh.load_state_dict(compact.state_dict())
    with torch.no_grad():
        assert close(compact_output, call(fresh, inputs))
    torch.save({"state_dict": compact.state_dict()}, tmp_path / "compact.ckpt")
    with torch.no_grad():
        assert close(compact_output, call(load_pruned(build().eval(), tmp_path / "compact.ckpt"), inputs))


def test_attention_heads_stay_equal_and_scores_keep_their_scale():
    torch.manual_seed(0)
    model, inputs = awake(TextTransformer(dim=16, heads=2)), tokens()
    found = plan(model, [inputs], default_roots(model), classifier_name(model))
    stream = next(g for g in found.groups if g.norms)
    # one class per head: every head loses as many dimensions
    assert sorted(torch.bincount(stream.class_of()).tolist()) == [8, 8]
    # three dimensions of head 0 and three of head 1
    mask_channels(model, found.groups, {stream.name: torch.tensor([0, 3, 5, 9, 12, 14])})
    compact = compact_copy(model, inputs)
    attention = compact.encoder.layers[0].self_attn
    assert (attention.embed_dim, attention.num_heads, attention.head_dim) == (10, 2, 5)
    with torch.no_grad():
        assert close(call(model, inputs), call(compact.eval(), inputs))


def test_a_grouped_convolution_loses_as_many_channels_in_every_group():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 12, 3, padding=1, groups=4), nn.GroupNorm(2, 12), nn.ReLU(),
        nn.Conv2d(12, 12, 3, padding=1, groups=12), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5),
    ).eval()  # fmt: skip
    inputs = images()
    found = plan(model, [inputs], default_roots(model), classifier_name(model))
    first, grouped = (next(g for g in found.groups if f"{i}.weight" in {m.param for m in g.members}) for i in (0, 3))
    # the first conv's 8 channels feed the grouped conv (4 groups of 2 inputs): channel j of every group goes together
    assert torch.equal(first.unit_of(), torch.tensor([0, 1] * 4))
    # the grouped conv's 12 outputs: its 4 groups of 3 inside the GroupNorm's 2 groups of 6: 4 classes of 3, each
    # losing as many; the depthwise conv after it goes with them
    assert torch.equal(grouped.class_of(), torch.arange(4).repeat_interleave(3))
    assert {"4.weight", "6.weight"} <= {m.param for m in grouped.members}
    mask_channels(model, found.groups, pick_channels(found.groups))
    compact = compact_copy(model, inputs)
    assert (compact[3].in_channels, compact[3].out_channels, compact[3].groups) == (4, 8, 4)
    assert compact[6].groups == compact[6].out_channels == 8 and compact[4].num_channels == 8
    with torch.no_grad():
        assert close(call(model, inputs), call(compact.eval(), inputs))


def test_a_layer_norm_over_an_images_channels_ignores_the_masked_ones():
    from torchvision.models.convnext import LayerNorm2d  # ConvNeXt's: permutes the channels last, normalises them

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), LayerNorm2d(8), nn.GELU(), nn.Conv2d(8, 6, 3, padding=1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5),
    ).eval()  # fmt: skip
    inputs = images()
    found = plan(model, [inputs], default_roots(model), classifier_name(model))
    assert not found.skipped and any(g.norms for g in found.groups)
    mask_channels(model, found.groups, pick_channels(found.groups))
    compact = compact_copy(model, inputs)
    assert compact[1].normalized_shape == (4,)
    with torch.no_grad():
        assert close(call(model, inputs), call(compact.eval(), inputs))


# -- training ---------------------------------------------------------------------------------------------------


class Wrapper(L.LightningModule):
    """No `forward`: training_step calls `self.net`, as many LightningModules do; logs `train_loss` per epoch."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def training_step(self, batch, batch_idx):
        *inputs, target = batch
        loss = F.cross_entropy(self.net(*inputs), target)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def fit(net: nn.Module, data: TensorDataset, epochs: int = 4, **settings) -> tuple[Wrapper, RealTimePruningCallback]:
    module = Wrapper(net)
    pruning = RealTimePruningCallback(mode="structured", target_sparsity=0.5, initial_ratio=0.3, **settings)
    quiet_trainer(max_epochs=epochs, callbacks=[pruning]).fit(module, DataLoader(data, batch_size=4))
    return module, pruning


def image_data() -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    return TensorDataset(
        torch.randn(16, 3, 32, 32, generator=generator), torch.randint(0, 10, (16,), generator=generator)
    )


def token_data() -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    return TensorDataset(
        torch.randint(0, VOCAB, (16, 7), generator=generator), torch.randint(0, 3, (16,), generator=generator)
    )


def reached_target(pruning: RealTimePruningCallback) -> bool:
    return abs(pruning.sparsity - 0.5) <= pruning.pruner.resolution() + 1e-9


def test_a_vision_transformer_trains_masked_and_exports_what_it_computes():
    L.seed_everything(0)
    module, pruning = fit(tiny_vit(), image_data(), shrink_when="end")
    assert reached_target(pruning)
    assert pruning.pruner.plan.target == "net"
    # masked, not removed: every cut weight is still exactly zero, the layer norms ignore the masked channels
    weights = pruning.masks.weights
    assert all(not weights[n][cut].any() for n, cut in pruning.masks.pruned.items())
    assert any(m._forward_hooks for m in module.net.modules())
    exported = pruning.export(module)
    assert sum(p.numel() for p in exported.parameters()) < sum(p.numel() for p in module.parameters())
    x = image_data().tensors[0][:4]
    with torch.no_grad():
        assert close(module.net.eval()(x), exported.net.eval()(x))
    assert not any(m._forward_hooks for m in exported.modules())


def test_a_gru_and_a_bidirectional_lstm_shrink_while_training():
    for net in (GRUClassifier(hidden=16), BiLSTMClassifier(hidden=16)):
        L.seed_everything(0)
        module, pruning = fit(net, token_data())
        rnn = module.net.gru if isinstance(net, GRUClassifier) else module.net.lstm
        assert rnn.hidden_size < 16 and reached_target(pruning)
        # shrunk: no masks left to apply, no hooks, and the export is the model itself
        assert not any(p.any() for p in pruning.masks.pruned.values())
        x = token_data().tensors[0][:4]
        with torch.no_grad():
            assert torch.equal(module.net.eval()(x), pruning.export(module).net.eval()(x))


def test_a_shrunk_vision_transformer_resumes_from_its_checkpoint(tmp_path):
    L.seed_everything(0)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    # one pruning window across both fits: decisions at epochs 0 and 1, then, resumed, at 2
    settings = {"mode": "structured", "target_sparsity": 0.5, "initial_ratio": 0.3, "end_epoch": 3}
    first = RealTimePruningCallback(**settings)
    trainer = quiet_trainer(max_epochs=2, callbacks=[first, checkpoint], enable_checkpointing=True)
    trainer.fit(Wrapper(tiny_vit()), DataLoader(image_data(), batch_size=4))
    resumed, second = Wrapper(tiny_vit()), RealTimePruningCallback(**settings)
    trainer = quiet_trainer(max_epochs=4, callbacks=[second])
    trainer.fit(resumed, DataLoader(image_data(), batch_size=4), ckpt_path=tmp_path / "last.ckpt")
    # the fresh full-size model took the shrunk shapes, and pruning went on from where it was, counted the same way
    assert [h["epoch"] for h in second.history] == [0, 1, 2, 3] and second.history[:2] == first.history[:2]
    assert second.pruner.prunable == first.pruner.prunable
    assert second.pruner.initial_weights == first.pruner.initial_weights
    assert resumed.net.hidden_dim < 16 and reached_target(second)
    x = image_data().tensors[0][:4]
    with torch.no_grad():
        assert close(resumed.net.eval()(x), second.export(resumed).net.eval()(x))


class LanguageModel(L.LightningModule):
    """Lightning's demo Transformer, whose forward takes the inputs and the target."""

    def __init__(self) -> None:
        super().__init__()
        self.net = Transformer(vocab_size=VOCAB, ninp=16, nhead=2, nhid=32, nlayers=1)

    def forward(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.net(inputs, target)

    def training_step(self, batch, batch_idx):
        inputs, target = batch
        loss = F.nll_loss(self(inputs, target), target.view(-1))
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def test_the_demo_transformer_runs_on_the_whole_batch_and_keeps_its_stream_whole():
    L.seed_everything(0)
    generator = torch.Generator().manual_seed(0)
    text = torch.randint(0, VOCAB, (16, 8), generator=generator)
    module = LanguageModel()
    dense = sum(w.numel() for w in default_prunable(LanguageModel()).values())
    pruning = RealTimePruningCallback(mode="structured", target_sparsity=0.5, initial_ratio=0.3)
    with pytest.warns(UserWarning) as caught:
        quiet_trainer(max_epochs=4, callbacks=[pruning]).fit(
            module, DataLoader(TensorDataset(text, text), batch_size=4)
        )
    said = [str(w.message) for w in caught]
    assert any(re.search(r"'net\.embedding'.*fails once its channels are removed", m) for m in said)
    # the batch's inputs alone do not run it: the whole batch does
    assert len(as_tuple(pruning.example_input)) == 2
    # only the feed-forward layers hold prunable groups: they shrank, the embedding stream did not
    assert module.net.transformer.encoder.layers[0].linear1.out_features < 32
    assert module.net.embedding.embedding_dim == 16
    # the stream's attention projections still count (as weights that stay): the target is out of reach, said at
    # setup, and sparsity is what the weights show, over all of them (it used to report 0.5 at 12.5% zeros)
    assert any("target_sparsity=0.5 cannot be reached" in m and "at most about 0.39" in m for m in said)
    now = sum(int(w.count_nonzero()) for w in default_prunable(module).values())
    assert pruning.sparsity == pytest.approx(1 - now / dense) and 0.3 < pruning.sparsity < 0.4


def test_a_gru_counts_only_what_it_can_prune_before_any_cut():
    model, pruning = Wrapper(GRUClassifier()), RealTimePruningCallback(mode="structured", target_sparsity=0.5)
    pruning.setup(quiet_trainer(max_epochs=1), model, "fit")
    pruning.pruner.prepare([tokens()])
    assert pruning.sparsity == 0.0
    gru_weights = sum(p.numel() for n, p in model.net.gru.named_parameters() if n.startswith("weight"))
    assert pruning.pruner.initial_weights == gru_weights


def test_a_module_that_declares_its_input_is_checked_at_setup():
    module = Wrapper(GRUClassifier())
    module.example_input_array = tokens()
    pruning = RealTimePruningCallback(mode="structured", target_sparsity=0.5)
    pruning.setup(quiet_trainer(max_epochs=1), module, "fit")
    assert pruning.pruner.plan.target == "net" and [g.name for g in pruning.pruner.plan.groups] == [
        "net.gru.l0",
        "net.gru.l1",
    ]


def test_exclude_routes_around_a_layer_structured_pruning_cannot_shrink():
    with pytest.warns(UserWarning, match=r"'net\.lstm'.*proj_size"):
        fit(ProjectedLSTM(hidden_layer=True), token_data(), epochs=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module, pruning = fit(ProjectedLSTM(hidden_layer=True), token_data(), exclude=["*lstm*"])
    assert not [w for w in caught if "structured pruning" in str(w.message)]
    assert pruning.pruner.prunable == ["net.hidden.0.weight"]
    assert module.net.hidden[0].out_features < 16


def test_nothing_to_prune_is_an_error_at_the_first_batch_that_names_the_layer():
    with pytest.raises(ValueError, match=r"'net\.lstm'.*proj_size"):
        fit(ProjectedLSTM(hidden_layer=False), token_data(), epochs=1)
