"""The benchmarks' verdicts: a target is judged only when its margin exceeds the figures' spread,
and bf16 is said to change training only when its gap exceeds both seed gaps."""
import pytest

from benchmarks import bench_demo
from benchmarks.common import NOISE_VERDICT, combined_spread, spread, target_verdict


def test_spread_is_median_and_relative_range():
    figure = spread([1.0, 3.0, 2.0, 2.0, 10.0])
    assert figure["median"] == 2.0 and (figure["min"], figure["max"]) == (1.0, 10.0)
    assert figure["relative_spread"] == 4.5 and figure["repeats"] == 5
    with pytest.raises(ValueError):
        spread([])


@pytest.mark.parametrize("value,target,noise,op,verdict", [
    (1.30, 1.25, 0.10, ">=", NOISE_VERDICT),  # 4% above the target, 10% spread: cannot tell
    (1.30, 1.25, 0.02, ">=", "met"),
    (1.10, 1.25, 0.02, ">=", "not met"),
    (1.10, 1.25, 0.20, ">=", NOISE_VERDICT),  # 12% below, 20% spread: cannot tell either
    (2.5, 3.0, 0.05, "<=", "met"),
    (3.5, 3.0, 0.05, "<=", "not met"),
])
def test_a_target_is_judged_only_beyond_the_spread(value, target, noise, op, verdict):
    judged = target_verdict(value, target, noise, op)
    assert judged["verdict"] == verdict
    assert (judged["met"] is None) == (verdict == NOISE_VERDICT)


def test_a_ratio_carries_the_spread_of_both_figures():
    assert combined_spread({"relative_spread": 0.03}, {"relative_spread": 0.05}) == 0.08


def _run(precision, seed, losses):
    return {"precision": precision, "seed": seed, "loss": losses}


def test_bf16_beyond_noise_only_above_both_seed_gaps():
    base = [_run("float32", 0, [3.0, 2.0]), _run("float32", 1, [3.0, 2.1]), _run("mixed_bfloat16", 1, [3.0, 2.4])]
    beyond = bench_demo.precision_gaps(base + [_run("mixed_bfloat16", 0, [3.0, 2.5])])
    assert beyond["gaps"]["precision"]["gap"] == pytest.approx(0.5) and beyond["verdict"] == bench_demo.BEYOND_NOISE
    # bf16's own seeds differ by 0.1 here but float32's by 0.1 and bf16 vs float32 by 0.05: noise.
    within = bench_demo.precision_gaps(base + [_run("mixed_bfloat16", 0, [3.0, 2.05])])
    assert within["verdict"] == bench_demo.WITHIN_NOISE
    # bf16 seeds far apart: a large precision gap is still within bf16's own noise.
    noisy = [_run("float32", 0, [3.0, 2.0]), _run("float32", 1, [3.0, 2.0]), _run("mixed_bfloat16", 0, [3.0, 2.5]),
             _run("mixed_bfloat16", 1, [3.0, 1.5])]
    assert bench_demo.precision_gaps(noisy)["verdict"] == bench_demo.WITHIN_NOISE
    assert bench_demo.precision_gaps(base[:2])["verdict"] == bench_demo.NOT_JUDGED
