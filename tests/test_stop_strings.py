"""The one stop-string rule every adapter uses (deeptalk_eval/models/stop_strings.py)."""
import random

import pytest

from deeptalk_eval.stop_strings import StopCut, first_stop


def streamed(text: str, stops, cuts) -> tuple[str, bool]:
    cutter = StopCut(stops)
    out, at = [], 0
    for c in [*cuts, len(text)]:
        out.append(cutter.push(text[at:c]))
        at = c
        if cutter.stopped:
            break
    return "".join(out) + cutter.finish(), cutter.stopped


def test_first_stop_is_the_earliest_of_any():
    assert first_stop("a. b\n\nc", ["\n\n", "."]) == 1
    assert first_stop("abc", ["x", ""]) == -1
    assert first_stop("abc", []) == -1


@pytest.mark.parametrize("seed", range(30))
def test_streaming_gives_the_text_cut_once_at_the_end(seed):
    """However the text is split into deltas, the shown text is the whole text cut at the first stop."""
    rng = random.Random(seed)
    text = "".join(rng.choice("ab\n.") for _ in range(40))
    stops = rng.sample(["\n\n", "a.b", "bb", "."], k=rng.randint(1, 3))
    cuts = sorted(rng.sample(range(1, len(text)), k=rng.randint(0, 12)))
    got, stopped = streamed(text, stops, cuts)
    cut = first_stop(text, stops)
    assert got == (text[:cut] if cut >= 0 else text)
    assert stopped == (cut >= 0)


def test_a_stop_string_split_over_deltas_is_never_shown_in_part():
    cutter = StopCut(["\n\nQ:"])
    shown = cutter.push("Paris.\n") + cutter.push("\n") + cutter.push("Q:")
    assert shown == "Paris." and cutter.stopped and cutter.finish() == ""


def test_without_stop_strings_every_delta_shows_at_once():
    cutter = StopCut([])
    assert cutter.push("ab") == "ab" and cutter.push("c") == "c" and cutter.finish() == ""


def test_shown_text_is_never_taken_back():
    """What was shown stays shown: the cutter holds back what could still start a stop string."""
    cutter = StopCut(["\n\n", "Q:"])
    shown = [cutter.push(d) for d in ("The answer", " is 4.\n", "\n", "Q: next")]
    assert shown == ["The answe", "r is 4.", "", ""] and "".join(shown) == "The answer is 4."
