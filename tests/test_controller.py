"""The ratio controller: its rules, its invariants under any loss sequence (hypothesis), its state."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_prune.controller import Action, RatioController, changed_settings

losses = st.lists(st.floats(min_value=1e-4, max_value=100.0, allow_nan=False), min_size=1, max_size=40)


def simulate(controller: RatioController, loss_sequence, intervals: int):
    """Feed losses; model the masks: a cut of r removes r of the remaining, a rollback restores the last cut."""
    sparsity, before_cut, trace = 0.0, 0.0, []
    for t in range(intervals):
        loss = loss_sequence[t % len(loss_sequence)]
        ratio_before = controller.ratio
        decision = controller.step(loss, 1.0, sparsity, intervals - t)
        if decision.action == Action.ROLLBACK:
            sparsity = before_cut
        elif decision.prunes:
            before_cut = sparsity
            sparsity = sparsity + (1 - sparsity) * decision.ratio
        trace.append((loss, ratio_before, decision, sparsity, controller.ratio))
    return sparsity, trace


@settings(max_examples=300, deadline=None)
@given(
    loss_sequence=losses,
    target=st.floats(min_value=0.05, max_value=0.99),
    intervals=st.integers(min_value=1, max_value=40),
    initial=st.floats(min_value=1e-3, max_value=1.0),
    cooldown=st.integers(min_value=0, max_value=3),
)
def test_target_is_reached_on_time_and_never_exceeded(loss_sequence, target, intervals, initial, cooldown):
    controller = RatioController(target_sparsity=target, initial_ratio=initial, max_ratio=1.0, cooldown=cooldown)
    final, trace = simulate(controller, loss_sequence, intervals)
    assert all(sparsity <= target + 1e-9 for *_, sparsity, _ in trace)
    assert final == pytest.approx(target, abs=1e-6)


@settings(max_examples=300, deadline=None)
@given(
    loss_sequence=losses,
    bounds=st.tuples(st.floats(0, 1), st.floats(0, 1)).map(sorted),
    initial=st.floats(min_value=1e-3, max_value=1.0),
    target=st.one_of(st.none(), st.floats(min_value=0.05, max_value=0.99)),
)
def test_ratio_stays_within_its_bounds(loss_sequence, bounds, initial, target):
    low, high = bounds
    controller = RatioController(min_ratio=low, max_ratio=high, initial_ratio=initial, target_sparsity=target)
    _, trace = simulate(controller, loss_sequence, 30)
    for *_, decision, _, ratio in trace:
        assert low - 1e-12 <= ratio <= high + 1e-12
        assert decision.ratio <= high + 1e-12


@settings(max_examples=300, deadline=None)
@given(loss_sequence=losses, tolerance=st.floats(0, 0.5))
def test_a_rising_loss_never_increases_the_ratio(loss_sequence, tolerance):
    controller = RatioController(loss_tolerance=tolerance, rollback_tolerance=tolerance * 3, max_ratio=1.0)
    _, trace = simulate(controller, loss_sequence, 30)
    previous_loss = None
    for loss, ratio_before, decision, _, ratio_after in trace:
        rose = previous_loss is not None and (loss - previous_loss) / max(abs(previous_loss), 1e-3) > tolerance
        if rose and decision.action != Action.PAUSE:
            assert ratio_after <= ratio_before
        if decision.action != Action.ROLLBACK:
            previous_loss = loss


def test_growth_shrink_rollback_cooldown_in_order():
    controller = RatioController(initial_ratio=0.1, growth=2, shrink=0.5, loss_tolerance=0.02, rollback_tolerance=0.1)
    step = controller.step
    assert step(1.00, None, 0.0, 100).action == Action.PRUNE  # first cut at the initial ratio
    assert controller.ratio == pytest.approx(0.1)
    assert step(0.99, None, 0.1, 99).ratio == pytest.approx(0.2)  # held: faster
    assert step(1.03, None, 0.28, 98).action == Action.SLOW_DOWN  # +4%: slower, still cutting
    assert controller.ratio == pytest.approx(0.1)
    decision = step(1.20, None, 0.35, 97)  # +16.5%: undo the last cut
    assert decision.action == Action.ROLLBACK and decision.ratio == 0
    assert controller.ratio == pytest.approx(0.05)
    assert step(1.0, None, 0.28, 96).action == Action.PAUSE  # cooldown=1
    assert step(1.0, None, 0.28, 95).action == Action.PRUNE


def test_loss_near_zero_does_not_turn_noise_into_rollbacks():
    controller = RatioController(initial_ratio=0.1)
    controller.step(1e-7, None, 0.0, 10)
    # from 1e-7 to 1e-5 is +9900% relative, but below the tolerance measured against a floor of 1e-3
    assert controller.step(1e-5, None, 0.1, 9).action == Action.PRUNE


def test_non_finite_loss_pauses_and_is_not_used_as_reference():
    controller = RatioController(initial_ratio=0.1)
    controller.step(1.0, None, 0.0, 10)
    for bad in (math.nan, math.inf):
        decision = controller.step(bad, None, 0.1, 9)
        assert decision.action == Action.PAUSE and decision.ratio == 0 and "non-finite" in decision.reason
    assert controller.reference_loss == 1.0


def test_rollback_never_defeats_the_target_floor():
    # 3 intervals to reach 0.9 at max_ratio 0.9: undoing a cut would make the target unreachable
    controller = RatioController(target_sparsity=0.9, max_ratio=0.9, initial_ratio=0.5, cooldown=1)
    first = controller.step(1.0, None, 0.0, 3)
    sparsity = first.ratio
    assert controller.step(5.0, None, sparsity, 2).action != Action.ROLLBACK
    # with time to spare the same loss jump is undone
    roomy = RatioController(target_sparsity=0.9, max_ratio=0.9, initial_ratio=0.1, cooldown=1)
    roomy.step(1.0, None, 0.0, 20)
    assert roomy.step(5.0, None, 0.1, 19).action == Action.ROLLBACK


def test_done_at_target_and_no_rollback_after_it():
    controller = RatioController(target_sparsity=0.5, initial_ratio=0.6, max_ratio=0.6)
    assert controller.step(1.0, None, 0.0, 5).ratio == pytest.approx(0.5)
    assert controller.step(9.0, None, 0.5, 4).action == Action.DONE


def test_gradient_norm_far_above_its_mean_damps_the_ratio():
    calm = RatioController(initial_ratio=0.1, growth=1.0)
    stormy = RatioController(initial_ratio=0.1, growth=1.0)
    for controller in (calm, stormy):
        controller.step(1.0, 1.0, 0.0, 10)
    calm.step(1.0, 1.0, 0.1, 9)
    stormy.step(1.0, 10.0, 0.1, 9)  # 10x the running mean
    assert stormy.ratio == pytest.approx(calm.ratio / 10)


def test_state_dict_round_trip_continues_identically():
    a = RatioController(target_sparsity=0.8, initial_ratio=0.05)
    for t, loss in enumerate([1.0, 0.9, 1.2, 0.8]):
        a.step(loss, 1.0 + t, 0.1 * t, 10 - t)
    b = RatioController(target_sparsity=0.8, initial_ratio=0.05)
    b.load_state_dict(a.state_dict())
    assert a.step(0.7, 2.0, 0.4, 6) == b.step(0.7, 2.0, 0.4, 6)
    assert a.state_dict() == b.state_dict()


def test_a_restored_controller_keeps_its_own_settings_and_the_saved_state():
    # a run resumed with a higher target means it: the checkpoint's settings must not silently replace it
    saved = RatioController(target_sparsity=0.5, initial_ratio=0.05)
    saved.step(1.0, 1.0, 0.0, 10)
    saved.step(0.9, 1.0, 0.05, 9)
    resumed = RatioController(target_sparsity=0.8, initial_ratio=0.05, max_ratio=0.3)
    resumed.load_state_dict(saved.state_dict())
    assert (resumed.target_sparsity, resumed.max_ratio) == (0.8, 0.3)
    assert resumed.ratio == saved.ratio and resumed.reference_loss == saved.reference_loss
    assert changed_settings(resumed, saved.state_dict()) == {"target_sparsity": (0.5, 0.8), "max_ratio": (0.5, 0.3)}


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"target_sparsity": 1.0}, "target_sparsity"),
        ({"target_sparsity": -0.1}, "target_sparsity"),
        ({"initial_ratio": 0.0}, "initial_ratio"),
        ({"initial_ratio": 1.5}, "initial_ratio"),
        ({"min_ratio": 0.6, "max_ratio": 0.5}, "min_ratio"),
        ({"max_ratio": 1.1}, "max_ratio"),
        ({"growth": 0.9}, "growth"),
        ({"shrink": 0.0}, "shrink"),
        ({"shrink": 1.1}, "shrink"),
        ({"loss_tolerance": -0.01}, "loss_tolerance"),
        ({"rollback_tolerance": -1}, "rollback_tolerance"),
        ({"cooldown": -1}, "cooldown"),
        ({"cooldown": 1.5}, "cooldown"),
    ],
)
def test_bad_settings_name_the_argument_and_range(kwargs, name):
    with pytest.raises(ValueError, match=rf"`{name}` must be"):
        RatioController(**kwargs)
