"""Structured pruning: groups, exactness of physical removal, shrinking during training, checkpoints, export."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn

from lightning_prune import ClassificationModule, RealTimePruningCallback
from lightning_prune.checkpoints import match_architecture
from lightning_prune.layers import classifier_name
from lightning_prune.models import MNISTCNN, CIFARResNet18, LSTMClassifier
from lightning_prune.structured import (
    ChannelGroup,
    channel_elements,
    compact_copy,
    default_roots,
    find_groups,
    select_channels,
)

from helpers import TinyNet, loader, quiet_trainer


def tokens_and_lengths(batch=4, length=9, vocab=50, seed=0):
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, vocab, (batch, length), generator=generator)
    lengths = torch.tensor([length, length - 3, 2, length - 1][:batch])
    for row, n in enumerate(lengths):
        tokens[row, n:] = 0
    return tokens, lengths


CASES = {
    "mnist_cnn": (lambda: MNISTCNN(), lambda: torch.randn(3, 1, 28, 28)),
    "resnet18": (lambda: CIFARResNet18(), lambda: torch.randn(3, 3, 32, 32)),
    "lstm": (lambda: LSTMClassifier(vocab_size=50, embed_dim=8, hidden_size=16), tokens_and_lengths),
}


def test_channel_ranking_normalised_per_group_or_raw():
    groups = [ChannelGroup("quiet", 4), ChannelGroup("loud", 4)]
    # the loud group's channels all matter more than the quiet group's; each channel frees the same weights
    scores = [torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([100.0, 200.0, 300.0, 400.0])]
    costs = [torch.ones(4), torch.ones(4)]
    gone = [torch.zeros(4, dtype=torch.bool)] * 2
    normalised = select_channels(groups, scores, costs, gone, budget=4, min_layer_density=0.0)
    assert {name: c.tolist() for name, c in normalised.items()} == {"quiet": [0, 1], "loud": [0, 1]}
    raw = select_channels(groups, scores, costs, gone, budget=4, min_layer_density=0.0, normalize_per_layer=False)
    # the quiet group gives all but the one channel every group keeps, the loud one only the rest
    assert {name: c.tolist() for name, c in raw.items()} == {"quiet": [0, 1, 2], "loud": [0]}


def run(model, inputs):
    return model(*inputs) if isinstance(inputs, tuple) else model(inputs)


def groups_of(model, inputs):
    return find_groups(model, inputs, default_roots(model), classifier_name(model))


def test_groups_of_the_mnist_cnn():
    groups, _ = groups_of(MNISTCNN(), torch.randn(2, 1, 28, 28))
    by_name = {g.name: g for g in groups}
    assert sorted(by_name) == ["conv1", "conv2", "fc1"]
    members = {(m.param, m.dim) for m in by_name["conv2"].members}
    assert members == {("conv2.weight", 0), ("conv2.bias", 0), ("fc1.weight", 1)}
    fc1_inputs = next(m for m in by_name["conv2"].members if m.param == "fc1.weight")
    # the flattened 64x12x12 output: each channel feeds 144 consecutive fc1 inputs
    assert len(fc1_inputs.channel) == 9216 and (fc1_inputs.channel[:144] == 0).all() and fc1_inputs.channel[144] == 1
    assert ("fc2.weight", 1) in {(m.param, m.dim) for m in by_name["fc1"].members}  # the classifier shrinks its input


def test_groups_of_resnet18_follow_the_residual_couplings():
    groups, _ = groups_of(CIFARResNet18(), torch.randn(2, 3, 32, 32))
    assert len(groups) == 12  # 8 inner block convs + 4 residual streams (stem/layer1, layer2, layer3, layer4)
    stream = next(g for g in groups if any(m.param == "layer4.0.downsample.0.weight" for m in g.members))
    producers = {m.param for m in stream.members if m.produces}
    assert {"layer4.0.conv2.weight", "layer4.1.conv2.weight", "layer4.0.downsample.0.weight"} <= producers
    assert {"layer4.0.bn2.weight", "layer4.1.bn2.bias"} <= producers
    assert ("fc.weight", 1) in {(m.param, m.dim) for m in stream.members}


def test_groups_of_the_two_layer_lstm():
    groups, _ = groups_of(LSTMClassifier(vocab_size=50, embed_dim=8, hidden_size=16), tokens_and_lengths())
    assert [g.name for g in groups] == ["lstm.l0", "lstm.l1"]
    l0 = {(m.param, m.dim) for m in groups[0].members}
    assert l0 == {("lstm.weight_ih_l0", 0), ("lstm.weight_hh_l0", 0), ("lstm.bias_ih_l0", 0), ("lstm.bias_hh_l0", 0),
                  ("lstm.weight_hh_l0", 1), ("lstm.weight_ih_l1", 1)}  # fmt: skip
    assert ("fc.weight", 1) in {(m.param, m.dim) for m in groups[1].members}


@pytest.mark.parametrize("case", list(CASES))
def test_removing_masked_channels_changes_no_output(case):
    torch.manual_seed(0)
    build, make_inputs = CASES[case]
    model, inputs = build().eval(), make_inputs()
    groups, _ = groups_of(model, inputs)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for index, group in enumerate(groups):  # different channels and counts per group
            channels = torch.arange(index % 3, group.size, 3)[: group.size // 2]
            for name, flat in channel_elements(group, channels, params).items():
                params[name].view(-1)[flat] = 0
    masked_output = run(model, inputs)
    compact = compact_copy(model, inputs)
    assert sum(p.numel() for p in compact.parameters()) < sum(p.numel() for p in model.parameters())
    assert (run(compact.eval(), inputs) - masked_output).abs().max() <= 1e-5
    # the original is untouched
    assert all(torch.equal(p, params[n]) for n, p in model.named_parameters())
    # and the compact state dict loads into a fresh full-size model once it takes the shapes
    fresh = build().eval()
    match_architecture(fresh, compact.state_dict())
    fresh.load_state_dict(compact.state_dict())
    assert torch.equal(run(fresh, inputs), run(compact, inputs))


def test_pruned_lstm_computes_exactly_what_the_masked_one_did_over_packed_sequences():
    torch.manual_seed(1)
    model = LSTMClassifier(vocab_size=50, embed_dim=8, hidden_size=16, num_layers=2).eval()
    inputs = tokens_and_lengths()
    groups, _ = groups_of(model, inputs)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for group, units in zip(groups, (torch.tensor([0, 3, 7, 9, 15]), torch.tensor([2, 4])), strict=True):
            for name, flat in channel_elements(group, units, params).items():
                params[name].view(-1)[flat] = 0
    compact = compact_copy(model, inputs)
    # layer 0 lost 5 units, layer 1 only 2: nn.LSTM has one hidden size, so both keep 14 (3 zero units padded)
    assert compact.lstm.hidden_size == 14 and compact.fc.in_features == 14
    assert compact.lstm.weight_ih_l1.shape == (4 * 14, 14)
    for lengths in (inputs[1], None):
        assert torch.equal(compact(inputs[0], lengths), model(inputs[0], lengths)) or torch.allclose(
            compact(inputs[0], lengths), model(inputs[0], lengths), atol=1e-6
        )


class Spy(Callback):
    """Placed before and after the pruning callback: what the optimizer holds around an interval."""

    def __init__(self) -> None:
        self.snapshots = []

    def on_train_epoch_end(self, trainer, pl_module):
        optimizer = trainer.optimizers[0]
        names = {id(p): n for n, p in pl_module.named_parameters()}
        state = {names[id(p)]: {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}
        shapes = {n: tuple(p.shape) for n, p in pl_module.named_parameters()}
        self.snapshots.append((state, shapes))


def test_shrinking_during_training_keeps_training_and_slices_adam_moments():
    L.seed_everything(0)
    pruning = RealTimePruningCallback(mode="structured", monitor="objective", target_sparsity=0.6, initial_ratio=0.3)
    before, after = Spy(), Spy()
    module = TinyNet()
    trainer = quiet_trainer(max_epochs=5, callbacks=[before, pruning, after])
    trainer.fit(module, loader())
    # the model really got smaller, and kept training after each rebuild (loss keeps being finite)
    assert module.net[0].out_features < 32 and module.net[2].out_features < 32
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in pruning.history)
    assert pruning.sparsity == pytest.approx(0.6, abs=0.05)
    # epoch 1's interval removed epoch 0's cut: Adam's moments of the survivors are the old ones, sliced
    old_state, old_shapes = before.snapshots[1]
    new_state, new_shapes = after.snapshots[1]
    assert new_shapes["net.0.weight"][0] < old_shapes["net.0.weight"][0]
    old_rows = old_state["net.0.weight"]["exp_avg"]
    new_rows = new_state["net.0.weight"]["exp_avg"]
    # the removed rows were masked (moments zeroed at the cut); the survivors keep theirs, in order, except the
    # rows this interval's new cut masks (zeroed, still present until the next interval)
    survivors = old_rows[old_rows.abs().sum(1) > 0]
    assert new_rows.shape == survivors.shape
    newly_cut = new_rows.abs().sum(1) == 0
    assert newly_cut.any() and torch.equal(new_rows[~newly_cut], survivors[~newly_cut])
    assert new_state["net.0.weight"]["step"] == old_state["net.0.weight"]["step"]
    # and the optimizer updates the new tensors, not stale ones
    assert {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]} == {
        id(p) for p in module.parameters()
    }


def test_checkpoint_of_a_shrunk_model_reloads_and_resumes(tmp_path):
    L.seed_everything(0)
    settings = {"mode": "structured", "monitor": "train_loss", "target_sparsity": 0.5, "initial_ratio": 0.2}
    data = loader()
    first = RealTimePruningCallback(**settings)
    module = ClassificationModule(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                                                nn.Linear(32, 4)))  # fmt: skip
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = quiet_trainer(max_epochs=3, callbacks=[first, checkpoint], enable_checkpointing=True)
    trainer.fit(module, data)
    shrunk_width = module.backbone[0].out_features
    assert shrunk_width < 32
    # load_from_checkpoint builds the full-size backbone, then takes the checkpoint's shapes
    reloaded = ClassificationModule.load_from_checkpoint(
        tmp_path / "last.ckpt",
        backbone=nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)),
    )
    x = torch.randn(5, 16)
    assert (
        reloaded.backbone[0].out_features
        == torch.load(tmp_path / "last.ckpt", weights_only=True)["state_dict"]["backbone.0.weight"].shape[0]
    )
    # a generic module (no on_load_checkpoint of its own) resumes through fit(ckpt_path=...)
    second = RealTimePruningCallback(**settings)
    fresh = ClassificationModule(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                                               nn.Linear(32, 4)))  # fmt: skip
    trainer = quiet_trainer(max_epochs=5, callbacks=[second], enable_checkpointing=False)
    trainer.fit(fresh, data, ckpt_path=tmp_path / "last.ckpt")
    assert [h["epoch"] for h in second.history] == [0, 1, 2, 3, 4]
    assert second.history[:3] == first.history[:3]
    assert fresh.backbone[0].out_features <= reloaded.backbone[0].out_features
    assert torch.isfinite(fresh(x)).all()


def test_generic_module_resumes_through_the_callbacks_resize_hook(tmp_path):
    L.seed_everything(0)
    settings = {"mode": "structured", "monitor": "objective", "target_sparsity": 0.5, "initial_ratio": 0.3}
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    first = RealTimePruningCallback(**settings)
    quiet_trainer(max_epochs=2, callbacks=[first, checkpoint], enable_checkpointing=True).fit(TinyNet(), loader())
    module = TinyNet()
    second = RealTimePruningCallback(**settings)
    quiet_trainer(max_epochs=4, callbacks=[second], enable_checkpointing=False).fit(
        module, loader(), ckpt_path=tmp_path / "last.ckpt"
    )
    assert module.net[0].out_features < 32
    assert "on_load_checkpoint" not in vars(module)  # the hook is removed after fit


def test_export_equals_the_pruned_model_and_leaves_it_untouched():
    L.seed_everything(0)
    pruning = RealTimePruningCallback(mode="structured", shrink_when="end", monitor="objective",
                                      target_sparsity=0.5, initial_ratio=0.3)  # fmt: skip
    module = TinyNet()
    quiet_trainer(max_epochs=3, callbacks=[pruning]).fit(module, loader())
    assert module.net[0].out_features == 32  # shrink_when="end": masked, not removed
    exported = pruning.export(module)
    assert exported.net[0].out_features < 32
    x = torch.randn(8, 16)
    module.eval()
    assert (exported.eval()(x) - module(x)).abs().max() <= 1e-5
    assert module.net[0].out_features == 32


def test_structured_resnet18_and_lstm_train_and_export():
    L.seed_everything(0)
    images = torch.utils.data.TensorDataset(torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,)))
    resnet = ClassificationModule(CIFARResNet18())
    pruning = RealTimePruningCallback(mode="structured", target_sparsity=0.5, initial_ratio=0.3)
    quiet_trainer(max_epochs=3, callbacks=[pruning]).fit(resnet, torch.utils.data.DataLoader(images, batch_size=8))
    # the network really is smaller: whole channels went (which ones is the saliency's choice)
    assert sum(p.numel() for p in resnet.parameters()) < 0.7 * sum(p.numel() for p in CIFARResNet18().parameters())
    exported = pruning.export(resnet)
    x = torch.randn(2, 3, 32, 32)
    resnet.eval()
    assert (exported.eval()(x) - resnet(x)).abs().max() <= 1e-4

    tokens, lengths = tokens_and_lengths(batch=4)
    text = torch.utils.data.TensorDataset(tokens.repeat(4, 1), lengths.repeat(4), torch.randint(0, 2, (16,)))
    lstm = ClassificationModule(LSTMClassifier(vocab_size=50, embed_dim=8, hidden_size=16))
    pruning = RealTimePruningCallback(mode="structured", target_sparsity=0.5, initial_ratio=0.3)
    quiet_trainer(max_epochs=3, callbacks=[pruning]).fit(lstm, torch.utils.data.DataLoader(text, batch_size=4))
    assert lstm.backbone.lstm.hidden_size < 16
    exported = pruning.export(lstm)
    lstm.eval()
    assert torch.allclose(exported.eval()(tokens, lengths), lstm(tokens, lengths), atol=1e-5)


def test_structured_shrinking_during_training_refuses_ddp():
    pruning = RealTimePruningCallback(mode="structured", monitor="objective")
    # constructing a 2-process DDP trainer starts no process; setup() is where the callback must refuse
    trainer = quiet_trainer(max_epochs=1, callbacks=[pruning], devices=2, strategy="ddp")
    assert trainer.world_size == 2
    with pytest.raises(ValueError, match="shrink_when='end'"):
        pruning.setup(trainer, TinyNet(), "fit")


def test_teardown_gives_back_a_resize_hook_the_user_set_on_the_instance(tmp_path):
    calls = []

    def users_hook(checkpoint):
        calls.append(checkpoint["epoch"])

    settings = {"mode": "structured", "monitor": "objective", "target_sparsity": 0.5, "initial_ratio": 0.3}
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    quiet_trainer(max_epochs=2, callbacks=[RealTimePruningCallback(**settings), checkpoint], enable_checkpointing=True)\
        .fit(TinyNet(), loader())  # fmt: skip
    module = TinyNet()
    module.on_load_checkpoint = users_hook
    quiet_trainer(max_epochs=3, callbacks=[RealTimePruningCallback(**settings)]).fit(
        module, loader(), ckpt_path=tmp_path / "last.ckpt"
    )
    # the shrunk checkpoint loaded (resized first), the user's hook ran, and it is still there afterwards
    assert module.net[0].out_features < 32
    assert calls == [1]
    assert vars(module)["on_load_checkpoint"] is users_hook


class Counter:
    """Counts the calls of a function it wraps (the function still runs)."""

    def __init__(self, function):
        self.function, self.calls = function, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.function(*args, **kwargs)


@pytest.mark.parametrize("shrink_when", ["end", "during"])
def test_an_interval_traces_the_graph_and_counts_flops_only_when_the_model_changed_shape(shrink_when, monkeypatch):
    import ptflops
    import torch_pruning as tp

    traces = Counter(tp.DependencyGraph.build_dependency)
    flops = Counter(ptflops.get_model_complexity_info)
    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", lambda self, *a, **k: traces(self, *a, **k))
    monkeypatch.setattr(ptflops, "get_model_complexity_info", flops)
    shapes = []

    class Shapes(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            shapes.append(tuple(p.shape for p in pl_module.parameters()))

    pruning = RealTimePruningCallback(mode="structured", monitor="objective", target_sparsity=0.6,
                                      initial_ratio=0.2, shrink_when=shrink_when)  # fmt: skip
    quiet_trainer(max_epochs=5, callbacks=[pruning, Shapes()]).fit(TinyNet(), loader())
    distinct = len(set(shapes))
    assert len(pruning.history) == 5 and pruning.sparsity > 0.3
    assert (distinct == 1) == (shrink_when == "end")
    # once per shape the model had at a decision (none more for selection, resolution or the FLOPs read-out),
    # plus the export profiled at the end of fit
    assert traces.calls <= distinct + 1 + 1
    assert flops.calls <= distinct + 1
