"""Tokens coloured by probability, their alternatives, and the branch panel.

:func:`tokens_html` renders a reply as one ``<span class='csl-tok' data-i=…>`` per token, its
background from red (unlikely) to green (likely), each holding its alternatives in a hidden
``.csl-alts``: a :class:`~chatstream_lab.notebook.reply_view.ReplyView` shows them in a popup on
hover (no ``title`` tooltip repeating it) and reports a click on a token. :class:`TokenPanel` is the
widget part a preview or a chat adds: a compact *probabilities* checkbox, a "branch at" picker (a
clicked token selects itself there) and one button per alternative; clicking one calls
``on_branch(i, token_id)``.

The stop token that ended a reply (``TokenLogprob.ends_reply``) is not part of the reply's text:
it shows as a muted end marker with its probability (how sure the model was to stop), and
branching there continues the reply instead of stopping. A token of a constrained reply
(``TokenLogprob.allowed``) is underlined from red (the grammar allowed little of what the model
wanted there) to green (the model wanted a valid token anyway).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape

import ipywidgets as widgets

from ..prompts.pieces import visible
from ..types import TokenLogprob, TopLogprob

Branch = Callable[[int, int], object]


def prob_colour(logprob: float) -> str:
    """A light background from red (p = 0) through yellow to green (p = 1)."""
    p = min(1.0, max(0.0, math.exp(logprob)))
    return f"hsl({round(120 * p)}, 75%, 85%)"


def alternative_label(alt: TopLogprob | TokenLogprob) -> str:
    """``'␣Paris' 93.1%``: the piece with visible whitespace and its probability."""
    return f"'{visible(alt.text)}' {100 * math.exp(alt.logprob):.1f}%"


def end_label(t: TokenLogprob) -> str:
    """``end of reply 93%``: the stop token, as the chance that the model stopped there."""
    return f"end of reply {100 * math.exp(t.logprob):.0f}%"


def allowed_label(t: TokenLogprob) -> str:
    """``grammar allowed 12.5%``: how much of the raw probability a constraint left (or "")."""
    return "" if t.allowed is None else f"grammar allowed {100 * t.allowed:.1f}%"


def _alternatives(i: int, t: TokenLogprob) -> str:
    """The popup's content: the token (its position), then the alternatives, the chosen one ticked."""
    rows = "".join(f"<div class='csl-alt'>{'✓ ' if a.token_id == t.token_id else '  '}"
                   f"{escape(alternative_label(a))}</div>" for a in t.top)
    if t.allowed is not None:
        rows += f"<div class='csl-alt'><b>{escape(allowed_label(t))}</b></div>"
    head = f"{end_label(t)} ({alternative_label(t)})" if t.ends_reply else alternative_label(t)
    return (f"<span class='csl-alts' style='display:none'><div class='csl-alt-head'>token {i}: "
            f"{escape(head)}</div>{rows}</span>")


def _token_span(i: int, t: TokenLogprob) -> str:
    if t.ends_reply:  # muted, uncoloured: its piece is not reply text
        return (f"<span class='csl-tok csl-end' data-i='{i}'>■ end {100 * math.exp(t.logprob):.0f}%"
                f"{_alternatives(i, t)}</span>")
    text = escape(t.text.replace("\n", "↵\n"))
    underline = ""
    if t.allowed is not None:  # a constrained token: underlined red (grammar overrode) .. green (model agreed)
        underline = f";border-bottom:3px solid {prob_colour(math.log(max(t.allowed, 1e-12))).replace('85%)', '45%)')}"
    return (f"<span class='csl-tok' data-i='{i}' style='background:{prob_colour(t.logprob)}{underline}'>{text}"
            f"{_alternatives(i, t)}</span>")


def tokens_html(tokens: Sequence[TokenLogprob]) -> str:
    """The reply as coloured token spans (no outer container; the view adds its own)."""
    return "".join(_token_span(i, t) for i, t in enumerate(tokens))


def forced(alt: TopLogprob, at: TokenLogprob) -> TokenLogprob:
    """The alternative ``alt`` of position ``at`` as the token there (the same alternatives)."""
    return TokenLogprob(alt.token_id, alt.text, alt.logprob, at.top, alt.raw)


def token_option(i: int, t: TokenLogprob) -> str:
    if t.ends_reply:
        return f"{i}: {end_label(t)}"
    return f"{i}: '{visible(t.text)}' {100 * math.exp(t.logprob):.0f}%"


class TokenPanel(widgets.VBox):
    """The *probabilities* checkbox (``colour``; the view places it in its controls row), the
    "branch at" ``picker`` and the alternative ``buttons`` (hidden until a finished reply has
    logprobs), and ``restore_button`` (shown by a view that can go back to a replaced reply)."""

    def __init__(self, on_toggle: Callable[[], object], on_branch: Branch | None,
                 on_restore: Callable[[], object] | None = None) -> None:
        self.colour = widgets.Checkbox(value=False, description="probabilities", indent=False,
                                       tooltip="colour tokens by probability; hover one for its alternatives",
                                       layout=widgets.Layout(width="auto", flex="0 0 auto", display="none"))
        self.colour.observe(lambda _c: on_toggle(), names="value")
        self.picker = widgets.Dropdown(description="branch at", options=[], style={"description_width": "5em"},
                                       tooltip="or click a token of the coloured reply",
                                       layout=widgets.Layout(width="auto", max_width="22em"))
        self.picker.observe(lambda _c: self._show_alternatives(), names="value")
        self.buttons = widgets.HBox(layout=widgets.Layout(flex_flow="row wrap"))
        self.restore_button = widgets.Button(description="original reply", icon="undo",
                                             tooltip="put back the reply this branch replaced",
                                             layout=widgets.Layout(width="auto", display="none"))
        if on_restore is not None:
            self.restore_button.on_click(lambda _b: on_restore())
        self._on_branch = on_branch
        self.tokens: tuple[TokenLogprob, ...] = ()
        branch_row = [self.picker, self.buttons] if on_branch is not None else []
        self.branch_row = widgets.HBox(branch_row, layout=widgets.Layout(display="none", flex_flow="row wrap",
                                                                         align_items="center"))
        super().__init__([self.branch_row, self.restore_button], layout=widgets.Layout(display="none"))

    @property
    def can_branch(self) -> bool:
        return self._on_branch is not None

    def update(self, tokens: Sequence[TokenLogprob], *, done: bool) -> None:
        """Show the checkbox once there are logprobs; the branch picker once the reply is done (a
        re-render of the same reply, e.g. the checkbox toggled, keeps the token picked)."""
        same = tuple(tokens) == self.tokens and bool(self.picker.options)
        self.tokens = tuple(tokens)
        self.colour.layout.display = "flex" if self.tokens else "none"
        ready = done and bool(self.tokens) and self._on_branch is not None
        if not ready:
            self.picker.options = []
        self.branch_row.layout.display = "flex" if ready else "none"
        self.layout.display = "flex" if ready or self.restore_button.layout.display != "none" else "none"
        if ready and not same:
            least = min(range(len(self.tokens)), key=lambda i: self.tokens[i].logprob)
            self.picker.options = [(token_option(i, t), i) for i, t in enumerate(self.tokens)]
            self.picker.value = least  # start at the least likely token: where branching is interesting
            self._show_alternatives()

    def show_restore(self, shown: bool) -> None:
        self.restore_button.layout.display = None if shown else "none"
        if shown:
            self.layout.display = "flex"

    def select(self, i: int) -> None:
        """Pick token ``i`` in "branch at" (a click on the token in the reply)."""
        if 0 <= i < len(self.tokens) and self.picker.options:
            self.picker.value = i

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
            tip = (f"continue with token {alt.token_id} instead of stopping" if at.ends_reply
                   else f"continue from here with token {alt.token_id}")
            b = widgets.Button(description=alternative_label(alt), layout=widgets.Layout(width="auto"),
                               tooltip=tip)
            b.on_click(lambda _b, pos=i, tid=alt.token_id: self.branch(pos, tid))
            buttons.append(b)
        self.buttons.children = tuple(buttons)

    def branch(self, i: int, token_id: int) -> None:
        if self._on_branch is not None:
            self._on_branch(i, token_id)
