"""Scheduler behaviour without a model: a fake step appends one token to every sequence that samples."""
from __future__ import annotations

from engine.block_manager import BlockManager
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler, SchedulerConfig
from engine.sequence import Sequence, SequenceStatus


def make_seq(rid: str, n_prompt: int, max_tokens: int) -> Sequence:
    return Sequence(rid, list(range(1, n_prompt + 1)), SamplingParams(max_tokens=max_tokens), max_total_tokens=4096)


def fake_step(sched: Scheduler):
    """Run one scheduler step as the engine would; returns (scheduled ids with token counts, finished ids)."""
    out = sched.schedule()
    sampling = [s.seq for s in out.scheduled if s.samples]
    for s in out.scheduled:
        s.seq.num_computed_tokens += s.num_tokens
    finished = []
    for seq in sampling:
        seq.output_token_ids.append(7)
        if len(seq.output_token_ids) >= seq.params.max_tokens:
            sched.finish(seq, "length")
            finished.append(seq.request_id)
    return {s.seq.request_id: s.num_tokens for s in out.scheduled}, finished, out


def run_to_end(sched: Scheduler, max_steps: int = 1000):
    history = []
    for _ in range(max_steps):
        if not sched.has_unfinished():
            return history
        history.append(fake_step(sched))
    raise AssertionError("scheduler did not finish")


def test_new_request_is_prefilled_in_the_same_step_as_running_decodes():
    bm = BlockManager(64, 4)
    sched = Scheduler(SchedulerConfig(max_batch_size=8, max_num_tokens=64), bm)
    sched.add(make_seq("a", 5, 10))
    scheduled, _, _ = fake_step(sched)
    assert scheduled == {"a": 5}
    sched.add(make_seq("b", 6, 10))
    scheduled, _, _ = fake_step(sched)
    assert scheduled == {"a": 1, "b": 6}  # a decodes while b prefills


def test_finished_sequences_leave_and_free_blocks_immediately():
    bm = BlockManager(64, 4)
    sched = Scheduler(SchedulerConfig(max_batch_size=8, max_num_tokens=64), bm)
    sched.add(make_seq("short", 4, 1))
    sched.add(make_seq("long", 4, 5))
    _, finished, _ = fake_step(sched)
    assert finished == ["short"]
    assert [s.request_id for s in sched.running] == ["long"]
    assert bm.num_used_blocks == 1  # only "long"'s 4 computed tokens hold a block
    run_to_end(sched)
    assert bm.num_free_blocks == bm.num_blocks


def test_max_batch_size_and_token_budget_limit_admission():
    bm = BlockManager(256, 4)
    sched = Scheduler(SchedulerConfig(max_batch_size=2, max_num_tokens=10), bm)
    for i in range(4):
        sched.add(make_seq(f"s{i}", 4, 3))
    scheduled, _, _ = fake_step(sched)
    assert scheduled == {"s0": 4, "s1": 4}  # batch size 2 caps it although budget remains
    sched2 = Scheduler(SchedulerConfig(max_batch_size=8, max_num_tokens=10), BlockManager(256, 4))
    for i in range(4):
        sched2.add(make_seq(f"s{i}", 4, 3))
    scheduled, _, _ = fake_step(sched2)
    assert scheduled == {"s0": 4, "s1": 4, "s2": 2}  # the budget chunks s2's prompt
    scheduled, _, _ = fake_step(sched2)
    assert scheduled == {"s0": 1, "s1": 1, "s2": 2, "s3": 4}  # s2 finishes its prompt, then s3 is admitted


def test_long_prompt_is_prefilled_in_chunks_without_starving_decodes():
    bm = BlockManager(256, 4)
    sched = Scheduler(SchedulerConfig(max_batch_size=4, max_num_tokens=8), bm)
    sched.add(make_seq("d", 2, 20))
    fake_step(sched)
    sched.add(make_seq("p", 30, 2))
    chunks = []
    for _ in range(5):
        scheduled, _, _ = fake_step(sched)
        assert scheduled.get("d") == 1  # the decoding sequence runs every step
        chunks.append(scheduled.get("p", 0))
    assert chunks[:4] == [7, 7, 7, 7] and sum(chunks) >= 30


def test_max_utilization_preempts_the_newest_and_everyone_finishes():
    bm = BlockManager(6, 4)  # 24 token slots for three sequences that need 12 each
    sched = Scheduler(SchedulerConfig(max_batch_size=4, max_num_tokens=64, policy="max_utilization"), bm)
    seqs = [make_seq(f"s{i}", 4, 8) for i in range(3)]
    for s in seqs:
        sched.add(s)
    history = run_to_end(sched)
    preempted = [p.request_id for _, _, out in history for p in out.preempted]
    assert preempted and preempted[0] == "s2"  # newest goes first
    assert all(s.status is SequenceStatus.FINISHED and len(s.output_token_ids) == 8 for s in seqs)
    assert sched.num_preemptions == len(preempted)
    assert bm.num_free_blocks == bm.num_blocks


def test_preempted_sequence_recomputes_prompt_and_generated_tokens():
    bm = BlockManager(4, 4)
    sched = Scheduler(SchedulerConfig(max_batch_size=4, max_num_tokens=64), bm)
    a, b = make_seq("a", 4, 12), make_seq("b", 4, 6)  # together they outgrow 4 blocks of 4
    sched.add(a)
    sched.add(b)
    recomputed = None
    for _ in range(50):
        if not sched.has_unfinished():
            break
        before = {s.request_id: s.num_tokens for s in sched.waiting}
        scheduled, _, _ = fake_step(sched)
        if b.num_preemptions and recomputed is None and "b" in scheduled:
            recomputed = (scheduled["b"], before["b"])
    assert b.num_preemptions >= 1
    assert recomputed is not None and recomputed[0] == recomputed[1]  # prompt + generated, all at once
    assert len(a.output_token_ids) == 12 and len(b.output_token_ids) == 6


def test_guaranteed_no_evict_reserves_the_lifetime_and_never_preempts():
    bm = BlockManager(6, 4)
    sched = Scheduler(SchedulerConfig(max_batch_size=4, max_num_tokens=64, policy="guaranteed_no_evict"), bm)
    seqs = [make_seq(f"s{i}", 4, 8) for i in range(3)]  # each needs 3 blocks for its lifetime
    for s in seqs:
        sched.add(s)
    scheduled, _, _ = fake_step(sched)
    assert scheduled == {"s0": 4, "s1": 4}  # the third does not fit until one finishes
    assert bm.num_used_blocks == 6
    history = run_to_end(sched)
    assert sched.num_preemptions == 0 and not any(out.preempted for _, _, out in history)
    assert all(len(s.output_token_ids) == 8 for s in seqs)


def test_static_batching_admits_no_one_until_the_whole_batch_is_done():
    bm = BlockManager(64, 4)
    sched = Scheduler(SchedulerConfig(max_batch_size=2, max_num_tokens=64, batching="static"), bm)
    sched.add(make_seq("a", 3, 2))
    sched.add(make_seq("b", 3, 6))
    sched.add(make_seq("c", 3, 2))
    steps = run_to_end(sched)
    assert steps[0][0] == {"a": 3, "b": 3}  # the batch is admitted together
    first_c = next(i for i, (sch, _, _) in enumerate(steps) if "c" in sch)
    last_b = max(i for i, (sch, _, _) in enumerate(steps) if "b" in sch)
    assert first_c == last_b + 1  # c waits for b, the batch's longest member, although a left early

    inflight = Scheduler(SchedulerConfig(max_batch_size=2, max_num_tokens=64), BlockManager(64, 4))
    for s in (make_seq("a", 3, 2), make_seq("b", 3, 6), make_seq("c", 3, 2)):
        inflight.add(s)
    steps = run_to_end(inflight)
    first_c = next(i for i, (sch, _, _) in enumerate(steps) if "c" in sch)
    assert first_c == 2  # c takes a's slot right after a finishes


def test_abort_frees_blocks_of_running_and_drops_waiting():
    bm = BlockManager(16, 4)
    sched = Scheduler(SchedulerConfig(max_batch_size=1, max_num_tokens=64), bm)
    sched.add(make_seq("run", 6, 10))
    sched.add(make_seq("wait", 6, 10))
    fake_step(sched)
    assert bm.num_used_blocks == 2
    assert sched.abort("wait").finish_reason == "abort"
    assert sched.abort("run").finish_reason == "abort"
    assert sched.abort("nope") is None
    assert bm.num_free_blocks == bm.num_blocks and not sched.has_unfinished()
