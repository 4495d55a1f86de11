"""profile(): every figure checked against a hand count, and the caller's model left exactly as it was."""

import io
from dataclasses import astuple

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from lightning_prune.models import LSTMClassifier
from lightning_prune.profiling import _index_bytes, count_macs, profile

KEYS = {
    "params_total",
    "params_nonzero",
    "flops_dense",
    "flops_effective",
    "latency_ms_per_batch",
    "state_dict_bytes",
    "sparse_bytes",
}


def small_net() -> nn.Sequential:
    # 1x5x5 -> conv 3x3 -> 2x3x3 -> ReLU -> flatten (18) -> linear 18->4
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(18, 4))


# ptflops counts, per sample:
#   conv:   out_h*out_w*out_c*(in_c*k*k) multiply-adds + one add per output element for the bias
#   ReLU:   one op per output element
#   Flatten: nothing (not a supported module)
#   linear: in*out multiply-adds + one add per output for the bias
CONV_MACS = 3 * 3 * 2 * (1 * 3 * 3) + 3 * 3 * 2
RELU_MACS = 2 * 3 * 3
LINEAR_MACS = 18 * 4 + 4
PARAMS = (2 * 1 * 3 * 3 + 2) + (18 * 4 + 4)


def test_a_small_network_matches_the_hand_count():
    model = small_net()
    with torch.no_grad():
        model[0].weight.view(-1)[:9] = 0.0  # half of the conv weights
        model[3].weight[0, :5] = 0.0
    stats = profile(model, torch.randn(6, 1, 5, 5), warmup=1, repeats=2)

    assert set(stats) == KEYS
    assert stats["params_total"] == PARAMS == 96
    assert stats["params_nonzero"] == PARAMS - 9 - 5
    assert stats["flops_dense"] == CONV_MACS + RELU_MACS + LINEAR_MACS == 274
    linear_density = (18 * 4 - 5) / (18 * 4)
    expected = CONV_MACS * 0.5 + RELU_MACS + LINEAR_MACS * linear_density
    assert stats["flops_effective"] == pytest.approx(expected)
    assert stats["state_dict_bytes"] == PARAMS * 4  # float32
    assert stats["sparse_bytes"] == (PARAMS - 14) * (4 + 4)  # non-zeros * (value + int32 index)
    assert isinstance(stats["flops_dense"], int) and isinstance(stats["flops_effective"], float)


def test_per_layer_macs_add_up_to_the_ptflops_total():
    macs = count_macs(small_net(), (torch.randn(2, 1, 5, 5),))
    assert macs.per_layer == {"0": CONV_MACS, "1": RELU_MACS, "3": LINEAR_MACS}
    assert sum(macs.per_layer.values()) == macs.total


def test_activation_modules_count_once_and_functional_calls_outside_modules_count_too():
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.act = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(self.act(self.fc(x)))  # F.relu outside any module: ptflops' functional patch counts it

    total, per_layer = astuple(count_macs(Functional(), (torch.randn(2, 4),)))
    # plain ptflops says 4*3+3 + 2*3 (nn.ReLU via its hook and again via the patched F.relu it calls) + 3
    assert per_layer == {"fc": 4 * 3 + 3, "act": 3}
    assert total == 4 * 3 + 3 + 3 + 3
    assert F.relu.__module__ == "torch.nn.functional"  # ptflops put back what it patched


def test_macs_are_per_sample_whatever_the_batch():
    one = profile(small_net(), torch.randn(1, 1, 5, 5), warmup=0, repeats=1)
    many = profile(small_net(), torch.randn(16, 1, 5, 5), warmup=0, repeats=1)
    assert one["flops_dense"] == many["flops_dense"] == 274


def test_storage_uses_each_tensors_element_size():
    model = nn.Linear(4, 2).to(torch.float64)
    with torch.no_grad():
        model.weight[0] = 0.0
    stats = profile(model, torch.randn(3, 4, dtype=torch.float64), warmup=0, repeats=1)
    assert stats["state_dict_bytes"] == 10 * 8
    assert stats["sparse_bytes"] == 6 * (8 + 4)
    assert _index_bytes(2**31 - 1) == 4
    assert _index_bytes(2**31) == 8


def lstm_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(1, 100, (3, 8))
    lengths = torch.tensor([6, 8, 3])
    tokens[0, 6:] = 0  # the first sample is 6 tokens long
    tokens[2, 3:] = 0
    return tokens, lengths


def lstm_step_macs(input_size: int, hidden: int) -> int:
    # ptflops' RNN formula per time step and layer: both matrix products, 4h gate adds, 3h + 3h for the cell and
    # hidden updates, and both biases (4h each)
    return 4 * hidden * input_size + 4 * hidden * hidden + 4 * hidden + 6 * hidden + 2 * 4 * hidden


class PackedLSTM(nn.Module):
    """A user's classifier that packs its padded batch before the LSTM."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 16, batch_first=True)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(features, lengths.cpu(), batch_first=True, enforce_sorted=False)
        return self.lstm(packed)[1][0][-1]


def test_a_packed_lstm_is_counted_over_the_real_length_of_the_first_sample():
    torch.manual_seed(0)
    _, lengths = lstm_inputs()
    total, per_layer = astuple(count_macs(PackedLSTM(), (torch.randn(3, 8, 8), lengths)))
    assert per_layer["lstm"] == total == 6 * lstm_step_macs(8, 16)


def test_lstm_classifier_counts_the_lstm_over_every_padded_step():
    # it runs the LSTM over the padding (cheaper on the CPU than packing), so the padding costs MACs
    torch.manual_seed(0)
    model = LSTMClassifier(vocab_size=100, embed_dim=8, hidden_size=16)
    inputs = lstm_inputs()
    total, per_layer = astuple(count_macs(model, inputs))
    lstm_macs = 8 * (lstm_step_macs(8, 16) + lstm_step_macs(16, 16))
    assert per_layer["lstm"] == lstm_macs > 0
    assert per_layer["fc"] == 16 * 2 + 2
    assert sum(per_layer.values()) == total

    dense = profile(model, inputs, warmup=0, repeats=1)
    assert dense["flops_dense"] == total
    assert dense["flops_effective"] == pytest.approx(total)

    with torch.no_grad():
        model.lstm.weight_ih_l0.zero_()
        model.lstm.weight_hh_l0.zero_()
    sparse = profile(model, inputs, warmup=0, repeats=1)
    lstm_weights = [w for name, w in model.lstm.named_parameters() if name.startswith("weight_")]
    zeroed = model.lstm.weight_ih_l0.numel() + model.lstm.weight_hh_l0.numel()
    density = 1 - zeroed / sum(w.numel() for w in lstm_weights)
    assert sparse["flops_dense"] == total
    assert sparse["flops_effective"] == pytest.approx(total - lstm_macs * (1 - density))
    assert sparse["flops_effective"] < dense["flops_effective"]
    assert sparse["params_nonzero"] == dense["params_nonzero"] - zeroed


def test_an_input_ptflops_cannot_run_is_a_runtime_error_naming_model_and_shapes():
    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    with pytest.raises(RuntimeError, match=r"Tiny.*\(2, 5\).*mat1 and mat2"):
        profile(Tiny(), torch.randn(2, 5))


def test_the_callers_model_is_left_untouched():
    model = LSTMClassifier(vocab_size=100, embed_dim=8, hidden_size=16)
    model.train()
    model.embedding.eval()  # a submodule frozen in eval mode must stay so
    attributes = {name: set(vars(module)) for name, module in model.named_modules()}
    modes = {name: module.training for name, module in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}

    profile(model, lstm_inputs(), warmup=1, repeats=2)

    assert {name: set(vars(module)) for name, module in model.named_modules()} == attributes
    assert {name: module.training for name, module in model.named_modules()} == modes
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    assert isinstance(torch.load(buffer, weights_only=False), LSTMClassifier)


class Recorder(nn.Module):
    """Records, per call, the thread count, the mode and whether inference mode is on."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.calls: list[tuple[int, bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((torch.get_num_threads(), self.training, torch.is_inference_mode_enabled()))
        return self.fc(x)


def test_latency_is_timed_in_eval_and_inference_mode_with_pinned_threads_restored_afterwards():
    model = Recorder()
    before = torch.get_num_threads()
    stats = profile(model, torch.randn(5, 4), warmup=2, repeats=3, threads=1)
    assert isinstance(stats["latency_ms_per_batch"], float) and stats["latency_ms_per_batch"] > 0
    assert torch.get_num_threads() == before
    # ptflops ran on a copy, so the original saw exactly the warm-up and the timed calls
    assert model.calls == [(1, False, True)] * 5
    assert model.training


def test_threads_and_modes_are_restored_when_the_timed_call_fails():
    class FailsWhenTimed(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if torch.is_inference_mode_enabled():  # ptflops counts under no_grad; only the timing uses inference mode
                raise RuntimeError("boom")
            return super().forward(x)

    before = torch.get_num_threads()
    model = FailsWhenTimed(4, 2).train()
    with pytest.raises(RuntimeError, match="boom"):
        profile(model, torch.randn(5, 4), threads=1)
    assert torch.get_num_threads() == before
    assert model.training


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"warmup": -1}, "warmup"), ({"repeats": 0}, "repeats"), ({"threads": 0}, "threads")],
)
def test_bad_arguments_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        profile(nn.Linear(4, 2), torch.randn(2, 4), **kwargs)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(TypeError, match="example_input"):
        profile(nn.Linear(4, 2), [torch.randn(2, 4)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch dimension"):
        profile(nn.Linear(4, 2), torch.tensor(1.0))
    with pytest.raises(ValueError, match="model's device"):
        profile(nn.Linear(4, 2, device="meta"), torch.randn(2, 4))
