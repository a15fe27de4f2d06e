"""Tokens coloured by probability, alternatives on hover, and a branch panel.

:func:`tokens_html` renders a reply as one ``<span>`` per token, its background from red
(unlikely) to green (likely), with the top alternatives in its ``title`` and in a small CSS
tooltip on hover. :class:`TokenPanel` is the widget part a preview or a chat adds: a toggle for the
colours, a token picker and one button per alternative; clicking one calls ``on_branch(i, token_id)``
(the view regenerates from there with that token forced, the earlier tokens kept). A token of a
constrained reply (``TokenLogprob.allowed``) is underlined from red (the grammar allowed little of
what the model wanted there) to green (the model wanted a valid token anyway).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape

import ipywidgets as widgets

from ..prompts.pieces import visible
from ..types import TokenLogprob, TopLogprob

_CSS = ("<style>.csl-tok{position:relative;border-radius:2px}"
        ".csl-tok .csl-alts{display:none;position:absolute;left:0;top:1.4em;z-index:10;background:#fff;"
        "border:1px solid #bbb;border-radius:4px;padding:2px 6px;white-space:pre;font-size:85%;"
        "box-shadow:0 1px 4px rgba(0,0,0,.2);color:#222}"
        ".csl-tok:hover .csl-alts{display:block}</style>")

Branch = Callable[[int, int], object]


def prob_colour(logprob: float) -> str:
    """A light background from red (p = 0) through yellow to green (p = 1)."""
    p = min(1.0, max(0.0, math.exp(logprob)))
    return f"hsl({round(120 * p)}, 75%, 85%)"


def alternative_label(alt: TopLogprob | TokenLogprob) -> str:
    """``'␣Paris' 93.1%``: the piece with visible whitespace and its probability."""
    return f"'{visible(alt.text)}' {100 * math.exp(alt.logprob):.1f}%"


def allowed_label(t: TokenLogprob) -> str:
    """``grammar allowed 12.5%``: how much of the raw probability a constraint left (or "")."""
    return "" if t.allowed is None else f"grammar allowed {100 * t.allowed:.1f}%"


def _token_span(i: int, t: TokenLogprob, colour: bool) -> str:
    alts = " | ".join(alternative_label(a) for a in t.top)
    title = f"{alternative_label(t)}" + (f" — top: {alts}" if alts else "")
    if t.allowed is not None:
        title += f" — {allowed_label(t)}"
    text = escape(t.text.replace("\n", "↵\n") if colour else t.text)
    if not colour:
        return text
    rows = "".join(f"<div class='csl-alt'>{escape(alternative_label(a))}</div>" for a in t.top)
    underline = ""
    if t.allowed is not None:  # a constrained token: underlined red (grammar overrode) .. green (model agreed)
        rows += f"<div class='csl-alt'><b>{escape(allowed_label(t))}</b></div>"
        underline = f";border-bottom:3px solid {prob_colour(math.log(max(t.allowed, 1e-12))).replace('85%)', '45%)')}"
    return (f"<span class='csl-tok' data-i='{i}' title='{escape(title, quote=True)}' "
            f"style='background:{prob_colour(t.logprob)}{underline}'>{text}"
            f"<span class='csl-alts'>{rows}</span></span>")


def tokens_html(tokens: Sequence[TokenLogprob], *, colour: bool = True) -> str:
    """The reply as token spans (no outer container; the view adds its own)."""
    spans = "".join(_token_span(i, t, colour) for i, t in enumerate(tokens))
    return (_CSS if colour else "") + spans


def forced(alt: TopLogprob, at: TokenLogprob) -> TokenLogprob:
    """The alternative ``alt`` of position ``at`` as the token there (the same alternatives)."""
    return TokenLogprob(alt.token_id, alt.text, alt.logprob, at.top, alt.raw)


class TokenPanel(widgets.VBox):
    """The probability toggle, a token picker and alternative buttons (hidden until there are
    logprobs). ``colour`` is the toggle; ``picker`` chooses the position; ``buttons`` branch."""

    def __init__(self, on_toggle: Callable[[], object], on_branch: Branch | None) -> None:
        self.colour = widgets.ToggleButton(value=False, description="probabilities", icon="adjust",
                                           tooltip="colour tokens by probability; hover for alternatives",
                                           layout=widgets.Layout(width="auto", flex="0 0 auto"))
        self.colour.observe(lambda _c: on_toggle(), names="value")
        self.picker = widgets.Dropdown(description="branch at", options=[], style={"description_width": "5em"},
                                       layout=widgets.Layout(width="auto", max_width="22em"))
        self.picker.observe(lambda _c: self._show_alternatives(), names="value")
        self.buttons = widgets.HBox(layout=widgets.Layout(flex_flow="row wrap"))
        self._on_branch = on_branch
        self.tokens: tuple[TokenLogprob, ...] = ()
        branch_row = [self.picker, self.buttons] if on_branch is not None else []
        self.branch_row = widgets.HBox(branch_row, layout=widgets.Layout(display="none", flex_flow="row wrap"))
        super().__init__([self.colour, self.branch_row], layout=widgets.Layout(display="none"))

    def update(self, tokens: Sequence[TokenLogprob], *, done: bool) -> None:
        """Show the panel once there are logprobs; the branch picker once the reply is done."""
        self.tokens = tuple(tokens)
        self.layout.display = "flex" if self.tokens else "none"
        ready = done and bool(self.tokens) and self._on_branch is not None
        self.branch_row.layout.display = "flex" if ready else "none"
        if ready:
            options = [(f"{i}: '{visible(t.text)}' {100 * math.exp(t.logprob):.0f}%", i)
                       for i, t in enumerate(self.tokens)]
            least = min(range(len(self.tokens)), key=lambda i: self.tokens[i].logprob)
            self.picker.options = options
            self.picker.value = least  # start at the least likely token: where branching is interesting
            self._show_alternatives()

    def _show_alternatives(self) -> None:
        i = self.picker.value
        if i is None or not 0 <= i < len(self.tokens):
            self.buttons.children = ()
            return
        at = self.tokens[i]
        buttons = []
        for alt in at.top:
            if alt.token_id == at.token_id:
                continue
            b = widgets.Button(description=alternative_label(alt), layout=widgets.Layout(width="auto"),
                               tooltip=f"continue from here with token {alt.token_id}")
            b.on_click(lambda _b, pos=i, tid=alt.token_id: self.branch(pos, tid))
            buttons.append(b)
        self.buttons.children = tuple(buttons)

    def branch(self, i: int, token_id: int) -> None:
        if self._on_branch is not None:
            self._on_branch(i, token_id)
