import pytest

from engine.detokenizer import IncrementalDetokenizer, StopStringMatcher


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_dir), local_files_only=True)


@pytest.mark.parametrize("text", [
    "naïve café, 日本語のテキスト, and a robot 🤖 with 👩‍💻 emoji",
    "Ünïcödé ∑∫√ — “quotes” … 한국어",
    " leading space and trailing space ",
])
def test_streaming_never_emits_a_broken_character_and_joins_to_the_full_text(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) < len(text.encode())  # multi-byte characters really are split across byte tokens
    detok = IncrementalDetokenizer(tokenizer, prompt_token_ids=tokenizer.encode("Say:"))
    deltas = [detok.add(i) for i in ids]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == tokenizer.decode(ids)
    assert "".join(deltas) == text


def test_stop_string_split_across_deltas_is_found_and_never_returned():
    m = StopStringMatcher(("STOP",))
    released = [m.add(d) for d in ["Hello ", "wor", "ld S", "TO", "P and more"]]
    assert m.stopped
    assert "".join(released) == "Hello world "
    assert "S" not in "".join(released)


def test_text_that_only_looked_like_a_stop_string_is_released_later():
    m = StopStringMatcher(("</end>",))
    assert m.add("a </") == "a "  # "</" may start the stop string: held back
    assert m.add("div>") == "</div>"
    assert not m.stopped
    assert m.add("x </e") == "x "
    assert m.flush() == "</e"  # finished for another reason: held text is final


def test_earliest_of_several_stop_strings_wins():
    m = StopStringMatcher(("cd", "b"))
    assert m.add("abcd") == "a" and m.stopped


def test_without_stop_strings_text_passes_straight_through():
    m = StopStringMatcher(())
    assert m.add("abc") == "abc" and m.add("d") == "d" and m.flush() == ""
