"""A sequence as the scheduler and block manager see it: token ids, progress and KV blocks."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from engine.sampling_params import SamplingParams


# An output token that is sampled but not yet on the host: the step after the one that samples it is
# launched first (async scheduling), reading the token from the device (see Sequence.pending_row).
PENDING = -1


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    # Tokens this sequence may hold in total (prompt + output); the engine's max_seq_len caps it.
    max_total_tokens: int
    output_token_ids: list[int] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    # How many of all_token_ids already have their K/V in the cache. After a preemption it drops to 0
    # and the prompt plus what was generated so far is prefilled again (recompute).
    num_computed_tokens: int = 0
    block_table: list[int] = field(default_factory=list)
    num_preemptions: int = 0
    finish_reason: str | None = None
    # While the last output token is PENDING: its row in the sampled tokens of the step in flight.
    pending_row: int | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    @property
    def max_lifetime_tokens(self) -> int:
        """Tokens the sequence may reach if it never stops early (what guaranteed_no_evict reserves)."""
        return min(len(self.prompt_token_ids) + self.params.max_tokens, self.max_total_tokens)

    @property
    def reached_max_length(self) -> bool:
        """Its last token ends it by length whatever that token is: nothing further to compute."""
        return len(self.output_token_ids) >= self.params.max_tokens or self.num_tokens >= self.max_total_tokens

    def token_at(self, position: int) -> int:
        n_prompt = len(self.prompt_token_ids)
        return self.prompt_token_ids[position] if position < n_prompt else self.output_token_ids[position - n_prompt]
