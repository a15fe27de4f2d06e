from __future__ import annotations

from chatstream_lab.engine.core.textfilter import TextFilter


def _run(pieces: list[str], **kw) -> tuple[str, bool]:
    f = TextFilter(**kw)
    out = []
    for p in pieces:
        r = f.push(p)
        out.append(r.text)
        if r.stopped:
            return "".join(out), True
    out.append(f.push("", final=True).text)
    return "".join(out), False


def test_stop_string_split_across_pieces_never_leaks() -> None:
    f = TextFilter(stop_strings=("</end>",))
    emitted = [f.push(p).text for p in ["Hello <", "/e", "nd> tail"]]
    assert emitted == ["Hello ", "", ""]


def test_partial_stop_prefix_is_released_when_not_a_stop() -> None:
    assert _run(["a <", "b"], stop_strings=("</end>",)) == ("a <b", False)


def test_prefix_pending_at_the_end_is_flushed() -> None:
    assert _run(["x </e"], stop_strings=("</end>",)) == ("x </e", False)


def test_output_replacement_split_across_pieces() -> None:
    assert _run(["line1<", "NL", ">line2"], replacements=(("<NL>", "\n"),)) == ("line1\nline2", False)


def test_replacement_then_stop() -> None:
    text, stopped = _run(["a<NL>", "b\nUSER:", " c"], stop_strings=("\nUSER:",),
                         replacements=(("<NL>", "\n"),))
    assert (text, stopped) == ("a\nb", True)
