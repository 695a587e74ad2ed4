"""bench/mixed_bound.py's step counts (CPU): static batches run to their longest member, in-flight slots refill
the step after they free."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "bench"))

from mixed_bound import inflight_steps, static_steps  # noqa: E402


def test_static_runs_each_batch_to_its_longest_member():
    assert static_steps([3, 1, 5, 2, 2], batch=2) == 3 + 5 + 2


def test_inflight_refills_a_slot_the_step_after_it_frees():
    # Slot A: 3 (steps 1-3), 2 (4-5), the last 2 (6-7); slot B: 1 (step 1), 5 (2-6).
    assert inflight_steps([3, 1, 5, 2, 2], batch=2) == 7
    assert inflight_steps([4, 4, 4], batch=3) == static_steps([4, 4, 4], batch=3) == 4  # equal lengths: no gain
