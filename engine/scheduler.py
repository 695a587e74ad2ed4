"""Iteration-level (in-flight) scheduler, plus a static-batching mode for comparison.

Every step: the running sequences go first (decode one token, or the next chunk of a prompt),
then waiting sequences are admitted while the batch size, the step's token budget and the free
KV blocks allow. Prefill and decode share a step (TensorRT-LLM's in-flight batching mixes context
and generation phases the same way): the GPU stays busy with decode work while a new prompt is
being read, and the token budget bounds how long any one step can take. Prompts longer than the
remaining budget are prefilled in chunks over several steps.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from engine.block_manager import BlockManager
from engine.sequence import Sequence, SequenceStatus

Policy = Literal["max_utilization", "guaranteed_no_evict"]
Batching = Literal["inflight", "static"]


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch_size: int = 64
    max_num_tokens: int = 8192
    # max_utilization: admit greedily; when KV runs out, preempt the newest sequence (recomputed later).
    # guaranteed_no_evict: admit only when prompt + max_tokens fits; nothing is ever preempted.
    policy: Policy = "max_utilization"
    # static: a batch runs until its longest member finishes before anyone new is admitted.
    batching: Batching = "inflight"


@dataclass(frozen=True)
class ScheduledSequence:
    seq: Sequence
    num_tokens: int  # tokens to compute this step, starting at seq.num_computed_tokens

    @property
    def samples(self) -> bool:
        """True when this chunk reaches the sequence's last token, so a next token is sampled."""
        return self.seq.num_computed_tokens + self.num_tokens == self.seq.num_tokens


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSequence] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.scheduled)


class Scheduler:
    def __init__(self, config: SchedulerConfig, block_manager: BlockManager):
        self.config = config
        self.block_manager = block_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self._static_batch: set[str] = set()

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self._schedule_running(out, self.config.max_num_tokens)
        if not out.preempted:
            self._admit_waiting(out, budget)
        return out

    def finish(self, seq: Sequence, reason: str) -> None:
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.block_manager.free(seq)

    def abort(self, request_id: str) -> Sequence | None:
        for seq in (*self.running, *self.waiting):
            if seq.request_id == request_id:
                self.finish(seq, "abort")
                return seq
        return None

    # -- internals ---------------------------------------------------------------------------

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> int:
        queue = list(self.running)  # admission order: the newest is preempted first
        while queue:
            seq = queue.pop(0)
            if seq.reached_max_length:  # its last token is in flight (async scheduling); it ends once known
                continue
            # Keep one token per later running sequence so a long prompt chunk never starves decodes.
            n = min(seq.num_uncomputed_tokens, budget - len(queue))
            if n <= 0:
                continue
            target = seq.num_computed_tokens + n
            while not self.block_manager.can_allocate(seq, target):
                victim = queue.pop() if queue else seq
                self._preempt(victim, out)
                if victim is seq:
                    break
            if seq.status is SequenceStatus.RUNNING:
                self.block_manager.allocate(seq, target)
                out.scheduled.append(ScheduledSequence(seq, n))
                budget -= n
        return budget

    def _admit_waiting(self, out: SchedulerOutput, budget: int) -> None:
        static = self.config.batching == "static"
        if static and not self.running:
            self._static_batch = {s.request_id for s in list(self.waiting)[:self.config.max_batch_size]}
        while self.waiting and len(self.running) < self.config.max_batch_size:
            seq = self.waiting[0]
            # Static: only members of the current batch (new, or preempted and coming back) get in.
            if static and seq.request_id not in self._static_batch:
                break
            n = min(seq.num_uncomputed_tokens, budget)
            if n <= 0 and not static:
                break
            # guaranteed_no_evict reserves the whole lifetime up front, so the sequence never grows later.
            whole_lifetime = self.config.policy == "guaranteed_no_evict"
            reserve = seq.max_lifetime_tokens if whole_lifetime else seq.num_computed_tokens + n
            if not self.block_manager.can_allocate(seq, reserve):
                break
            self.block_manager.allocate(seq, reserve)
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            if n > 0:
                out.scheduled.append(ScheduledSequence(seq, n))
                budget -= n

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        self.block_manager.free(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.running.remove(seq)
        self.waiting.appendleft(seq)
        out.preempted.append(seq)
