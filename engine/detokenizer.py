"""Turns a stream of token ids into a stream of text, and finds stop strings in it.

Text is emitted only when it is final: never half of a multi-byte UTF-8 character (the decoder
shows those as U+FFFD until the rest arrives), and never the start of what may turn out to be a
stop string (held back until it cannot be one; a matched stop string is never returned).
"""
from __future__ import annotations

from typing import Any

# Prompt tokens kept as left context, so that tokenizers which drop a leading space when decoding
# a sequence's first token (SentencePiece) still render the first output token's space.
_CONTEXT_TOKENS = 4


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, prompt_token_ids: list[int], skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = list(prompt_token_ids[-_CONTEXT_TOKENS:])
        self.prefix_offset = 0  # start of the window decoded for context
        self.read_offset = len(self.ids)  # ids before this have had their text emitted

    def add(self, token_id: int) -> str:
        """Append one token; return the text it completes (possibly empty)."""
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        if len(full) <= len(prefix) or full.endswith("\ufffd"):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return full[len(prefix):]

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens,
                                     clean_up_tokenization_spaces=False)


class StopStringMatcher:
    """Accumulates output text; releases it once no stop string can start in it."""

    def __init__(self, stop: tuple[str, ...]):
        self.stop = stop
        self.text = ""
        self.emitted = 0
        self.stopped = False

    def add(self, delta: str) -> str:
        """Add decoded text; return what can be released now. Sets `stopped` on a match."""
        if self.stopped:
            return ""
        search_from = max(0, len(self.text) - max((len(s) for s in self.stop), default=0) + 1)
        self.text += delta
        hits = [i for i in (self.text.find(s, search_from) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            self.stopped = True
            return self._release(len(self.text))
        return self._release(len(self.text) - self._held_back())

    def flush(self) -> str:
        """The sequence ended for another reason: whatever was held back is final now."""
        return self._release(len(self.text))

    def _held_back(self) -> int:
        # Longest tail of the text that is a proper prefix of some stop string.
        longest = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.text)), longest, -1):
                if self.text.endswith(s[:n]):
                    longest = n
                    break
        return longest

    def _release(self, end: int) -> str:
        end = max(end, self.emitted)
        out, self.emitted = self.text[self.emitted:end], end
        return out
