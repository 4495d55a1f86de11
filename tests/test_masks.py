"""Masks and saliency: what gets pruned, how it is selected, and that cuts stick or are undone exactly."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lightning_prune.importance import Saliency
from lightning_prune.layers import prunable_weights
from lightning_prune.masks import PruningMasks, lowest
from lightning_prune.models import MNISTCNN, CIFARResNet18, LSTMClassifier


def test_default_prunable_weights_of_the_reference_models():
    assert list(prunable_weights(MNISTCNN())) == ["conv1.weight", "conv2.weight", "fc1.weight"]
    lstm = prunable_weights(LSTMClassifier(vocab_size=10, embed_dim=4, hidden_size=4))
    assert list(lstm) == ["lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.weight_ih_l1", "lstm.weight_hh_l1"]
    resnet = prunable_weights(CIFARResNet18())
    assert "fc.weight" not in resnet and "conv1.weight" in resnet
    assert "layer2.0.downsample.0.weight" in resnet
    assert not any(name.endswith("bias") or ".bn" in name for name in resnet)
    assert len(resnet) == 20  # 1 stem + 16 block convs + 3 downsample convs


def test_parameters_and_exclude_patterns_choose_weights():
    model = MNISTCNN()
    assert list(prunable_weights(model, parameters=["fc*.weight"])) == ["fc1.weight", "fc2.weight"]
    assert list(prunable_weights(model, exclude=["conv*"])) == ["fc1.weight"]
    with pytest.raises(ValueError, match=r"\['nope\*'\] match no parameter"):
        prunable_weights(model, parameters=["nope*"])


def test_a_model_with_nothing_to_prune_is_a_clear_error():
    with pytest.raises(ValueError, match="found nothing to prune"):
        prunable_weights(nn.Sequential(nn.Linear(4, 2)))  # its only Linear is the classifier


def test_selection_is_global_over_normalised_scores_and_exact_in_count():
    a = nn.Parameter(torch.ones(10))
    b = nn.Parameter(torch.ones(10))
    masks = PruningMasks({"a": a, "b": b})
    # b's scores are 1000x larger but, normalised per layer, both layers have the same spread
    scores = {"a": torch.arange(10.0), "b": 1000 * torch.arange(10.0)}
    selection = masks.select(scores, count=6, min_layer_density=0.0)
    assert sorted(selection["a"].tolist()) == [0, 1, 2] and sorted(selection["b"].tolist()) == [0, 1, 2]
    # ties: exactly `count` are chosen
    assert sum(len(i) for i in masks.select({"a": torch.ones(10), "b": torch.ones(10)}, 7, 0.0).values()) == 7


def test_without_per_layer_normalisation_the_raw_scores_compete():
    a = nn.Parameter(torch.ones(10))
    b = nn.Parameter(torch.ones(10))
    masks = PruningMasks({"a": a, "b": b})
    scores = {"a": torch.arange(10.0), "b": 1000 + torch.arange(10.0)}  # every weight of b matters more
    selection = masks.select(scores, count=6, min_layer_density=0.2, normalize_per_layer=False)
    assert sorted(selection) == ["a"] and sorted(selection["a"].tolist()) == [0, 1, 2, 3, 4, 5]
    # min_layer_density still holds: a keeps 2 of its 10
    masks.cut(masks.select(scores, count=12, min_layer_density=0.2, normalize_per_layer=False))
    assert int((a != 0).sum()) == 2 and int((b == 0).sum()) == 4


def test_min_layer_density_protects_each_layer():
    small = nn.Parameter(torch.ones(10))
    big = nn.Parameter(torch.ones(100))
    masks = PruningMasks({"small": small, "big": big})
    scores = {"small": torch.zeros(10), "big": torch.ones(100)}  # small looks useless
    masks.cut(masks.select(scores, count=50, min_layer_density=0.3))
    assert int((small == 0).sum()) == 7  # 3 of 10 kept
    assert int((big == 0).sum()) == 43
    # asking for more than everything removable cuts only what is allowed
    masks.cut(masks.select(scores, count=10_000, min_layer_density=0.3))
    assert int((small != 0).sum()) == 3 and int((big != 0).sum()) == 30


def test_cut_zeroes_adam_moments_and_masks_keep_weights_at_zero():
    torch.manual_seed(0)
    layer = nn.Linear(8, 8)
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        layer(torch.randn(4, 8)).pow(2).sum().backward()
        optimizer.step()
    masks = PruningMasks({"weight": layer.weight})
    selection = masks.select({"weight": layer.weight.detach().abs()}, count=20, min_layer_density=0.0)
    masks.cut(selection, [optimizer])
    cut = masks.pruned["weight"]
    state = optimizer.state[layer.weight]
    assert (state["exp_avg"][cut] == 0).all() and (state["exp_avg_sq"][cut] == 0).all()
    assert (state["exp_avg"][~cut] != 0).any()
    for _ in range(5):
        optimizer.zero_grad()
        layer(torch.randn(4, 8)).pow(2).sum().backward()
        optimizer.step()  # the gradients of cut weights are not masked: re-applying the masks after the step is enough
        masks.apply()
        assert (layer.weight[cut] == 0).all()
    assert masks.sparsity() == pytest.approx(20 / 64)


def test_undo_restores_exactly_the_last_cut():
    w = nn.Parameter(torch.randn(50))
    original = w.detach().clone()
    masks = PruningMasks({"w": w})
    masks.cut(masks.select({"w": w.detach().abs()}, 10, 0.0))
    after_first = w.detach().clone()
    masks.cut(masks.select({"w": w.detach().abs()}, 10, 0.0))
    assert masks.undo_last_cut() == 10
    assert torch.equal(w.detach(), after_first)
    assert int(masks.pruned["w"].sum()) == 10
    assert torch.equal(w.detach()[~masks.pruned["w"]], original[~masks.pruned["w"]])


def test_mask_state_round_trip_and_shape_check():
    w = nn.Parameter(torch.randn(6, 6))
    masks = PruningMasks({"w": w})
    masks.cut(masks.select({"w": w.detach().abs()}, 12, 0.0))
    other_weight = nn.Parameter(torch.randn(6, 6))
    other = PruningMasks({"w": other_weight})
    other.load_state_dict(masks.state_dict())
    assert torch.equal(other.pruned["w"], masks.pruned["w"])
    assert (other_weight[other.pruned["w"]] == 0).all()
    with pytest.raises(KeyError, match="missing"):
        PruningMasks({"v": w}).load_state_dict(masks.state_dict())


@pytest.mark.parametrize("method", ["taylor", "gradient"])
def test_running_saliency_is_an_exponential_average(method):
    w = nn.Parameter(torch.tensor([2.0, -1.0]))
    saliency = Saliency({"w": w}, method=method, beta=0.5)
    expected = torch.zeros(2)
    for grad in ([1.0, 1.0], [-3.0, 0.0], [0.5, 2.0]):
        w.grad = torch.tensor(grad)
        saliency.update()
        fresh = (w.detach() * w.grad).abs() if method == "taylor" else w.grad.abs()
        expected = 0.5 * expected + 0.5 * fresh
    assert torch.allclose(saliency.scores()["w"].float(), expected, rtol=1e-2)  # an update's share is 0.5: bfloat16


def test_magnitude_saliency_reads_the_weights_now():
    w = nn.Parameter(torch.tensor([3.0, -0.5]))
    saliency = Saliency({"w": w}, method="magnitude")
    with torch.no_grad():
        w.mul_(-2)
    assert torch.equal(saliency.scores()["w"], torch.tensor([6.0, 1.0]))
    assert saliency.running == {}  # no buffer: nothing to accumulate


def test_buffers_follow_their_weights_to_another_device():
    # Lightning calls setup() before the strategy moves the model: the buffers must follow it in on_fit_start
    w = nn.Parameter(torch.randn(4, 4))
    masks = PruningMasks({"w": w})
    masks.cut(masks.select({"w": w.detach().abs()}, 3, 0.0))
    saliency = Saliency({"w": w}, method="taylor")
    w.grad = torch.randn_like(w)
    saliency.update()
    on_device = w.detach().to("meta")  # stands for the weight once the strategy moved it (no GPU in tests)
    masks.weights["w"] = saliency.weights["w"] = on_device
    masks.follow_weights()
    saliency.follow_weights()
    assert masks.pruned["w"].device.type == "meta"
    assert all(t.device.type == "meta" for t in masks.last_cut["w"])
    assert saliency.running["w"].device.type == "meta"


def test_an_update_after_skipped_steps_stands_for_them_too():
    w = nn.Parameter(torch.tensor([1.0]))
    saliency = Saliency({"w": w}, method="gradient", beta=0.5)
    w.grad = torch.tensor([8.0])
    saliency.update()  # 0.5 * 8: one step's share
    saliency.skip()
    saliency.skip()
    w.grad = torch.tensor([2.0])
    saliency.update()  # three steps: 0.5^3 * 4 + (1 - 0.5^3) * 2
    assert saliency.scores()["w"].item() == pytest.approx(0.125 * 4 + 0.875 * 2)


def test_scoring_every_few_steps_keeps_the_same_memory_of_the_past():
    # a gradient that drops from 10 to 1: every-step and every-fourth-step averages forget the 10 alike
    w = nn.Parameter(torch.ones(1))
    dense, sparse = Saliency({"w": w}, "gradient", beta=0.99), Saliency({"w": w}, "gradient", beta=0.99, every=4)
    for step in range(1000):
        w.grad = torch.tensor([10.0 if step < 600 else 1.0])
        dense.update()
        if step % 4 == 3:
            sparse.update()
        else:
            sparse.skip()
        if step in (650, 999):
            assert sparse.scores()["w"].item() == pytest.approx(dense.scores()["w"].item(), rel=0.05), step
    after_600 = 10 * (1 - 0.99**600)
    assert dense.scores()["w"].item() == pytest.approx(1 + (after_600 - 1) * 0.99**400, rel=1e-4)


def test_bfloat16_storage_stays_within_five_percent_of_float32():
    torch.manual_seed(0)
    w = nn.Parameter(torch.ones(1000))
    coarse = Saliency({"w": w}, "gradient", 0.99, every=8)
    assert coarse.dtype == torch.bfloat16 and Saliency({"w": w}, "gradient", 0.99).dtype == torch.float32
    exact = torch.zeros(1000, dtype=torch.float64)  # the same sampled average, in float64
    for step in range(800):
        w.grad = torch.randn(1000).abs() * (1 + step / 100)  # noisy and drifting upwards
        if step % 8 == 7:
            coarse.update()
            exact += (1 - 0.99**8) * (w.grad.double() - exact)
        else:
            coarse.skip()
    ratio = coarse.scores()["w"].double() / exact
    assert (ratio - 1).abs().max() < 0.05 and (ratio.mean() - 1).abs() < 0.01


def test_running_scores_are_half_precision_storage_and_freed_when_released():
    w = nn.Parameter(torch.randn(100, 10))
    saliency = Saliency({"w": w}, method="taylor", every=8)
    assert saliency.buffer_bytes() == 0  # nothing before the first update
    w.grad = torch.randn_like(w)
    saliency.update()
    assert saliency.buffer_bytes() == 2 * w.numel()
    saliency.release()
    assert saliency.buffer_bytes() == 0 and torch.equal(saliency.scores()["w"], w.detach().abs())


# non-negative float32 scores with many ties and some that cannot be chosen (+inf)
SCORES = st.one_of(st.floats(0, 1e3, width=32), st.sampled_from([0.0, 1e-30, 0.25, float("inf")]))


@settings(max_examples=200, deadline=None)
@given(values=st.lists(SCORES, min_size=1, max_size=200), count=st.integers(0, 210))
def test_the_radix_select_chooses_the_lowest_finite_scores_ties_by_position(values, count):
    scores = torch.tensor(values, dtype=torch.float32)
    finite = [i for i, v in enumerate(values) if v != float("inf")]
    expected = torch.zeros(len(values), dtype=torch.bool)
    # a stable sort by value keeps positions in order among ties
    expected[sorted(finite, key=lambda i: (scores[i].item(), i))[:count]] = True
    assert torch.equal(lowest(scores, count), expected)
