"""``ReplyView``: the box a reply (or a chat transcript) streams into.

An HTML box that the kernel fills (``value``: the same HTML an ``ipywidgets.HTML`` would take), with
what a plain HTML widget cannot do, done in the browser (a small ES module run by anywidget):

* a height cap with its own scroll bar that follows the end of a streaming reply (unless the reader
  scrolled up), so a long or degenerate reply never pushes what is under it off the screen;
* the alternatives of a probability-coloured token (its hidden ``.csl-alts``) in one popup placed
  in the viewport (``position: fixed``): never clipped by the output area, kept inside the reply box
  when it fits there, so it does not cover the lines around the box;
* ``.csl-clip`` on an ``ipywidgets.HTML`` lets its one-line labels shrink with their column and end in
  an ellipsis (ipywidgets sizes an HTML widget's content to its text, so the overflow was clipped
  without one);
* a click on a token sets ``selected`` (its index), which the views bind to their "branch at" picker;
  the selected token is outlined.
"""

from __future__ import annotations

import anywidget
import traitlets

_ESM = r"""
function place(pop, tok, box) {
  const r = tok.getBoundingClientRect(), b = box.getBoundingClientRect();
  const h = pop.offsetHeight, w = pop.offsetWidth;
  const vw = document.documentElement.clientWidth, vh = document.documentElement.clientHeight;
  const below = r.bottom + 3, above = r.top - h - 3;
  let top;
  if (below + h <= Math.min(b.bottom, vh)) top = below;      // inside the box, under the token
  else if (above >= Math.max(b.top, 0)) top = above;        // inside the box, over the token
  else if (below + h <= vh) top = below;                    // under the box's end
  else top = Math.max(0, above);
  pop.style.top = `${Math.round(top)}px`;
  pop.style.left = `${Math.round(Math.max(4, Math.min(r.left, vw - w - 4)))}px`;
}

function render({ model, el }) {
  el.classList.add("csl-replyview");
  const box = document.createElement("div");
  box.className = "csl-scroll";
  el.appendChild(box);
  const pop = document.createElement("div");
  pop.className = "csl-pop";
  pop.style.display = "none";
  document.body.appendChild(pop);
  let follow = true;  // at the end: stay there as text arrives

  const hide = () => { pop.style.display = "none"; };
  const mark = () => {
    for (const t of box.querySelectorAll(".csl-tok.csl-selected")) t.classList.remove("csl-selected");
    const i = model.get("selected");
    const t = i >= 0 ? box.querySelector(`.csl-tok[data-i="${i}"]`) : null;
    if (t) t.classList.add("csl-selected");
  };
  const draw = () => {
    box.style.maxHeight = model.get("max_height") || "none";
    box.classList.toggle("csl-clickable", model.get("clickable"));
    box.innerHTML = model.get("value");
    mark();
    if (follow) box.scrollTop = box.scrollHeight;
    hide();
  };
  const onScroll = () => { follow = box.scrollHeight - box.scrollTop - box.clientHeight < 6; hide(); };
  const onOver = (e) => {
    const tok = e.target.closest ? e.target.closest(".csl-tok") : null;
    const alts = tok ? tok.querySelector(".csl-alts") : null;
    if (!alts) { hide(); return; }
    pop.innerHTML = alts.innerHTML;
    pop.style.display = "block";
    place(pop, tok, box);
  };
  const onClick = (e) => {
    const tok = e.target.closest ? e.target.closest(".csl-tok") : null;
    if (!tok || !model.get("clickable")) return;
    model.set("selected", Number(tok.dataset.i));
    model.save_changes();
  };
  const onPageScroll = (e) => { if (e.target !== box) hide(); };
  box.addEventListener("scroll", onScroll);
  box.addEventListener("mouseover", onOver);
  box.addEventListener("mouseleave", hide);
  box.addEventListener("click", onClick);
  document.addEventListener("scroll", onPageScroll, true);
  model.on("change:value", draw);
  model.on("change:max_height", draw);
  model.on("change:clickable", draw);
  model.on("change:selected", mark);
  draw();
  return () => {
    document.removeEventListener("scroll", onPageScroll, true);
    model.off("change:value", draw);
    model.off("change:max_height", draw);
    model.off("change:clickable", draw);
    model.off("change:selected", mark);
    pop.remove();
  };
}
export default { render };
"""

_CSS = """
.csl-replyview { width: 100%; min-width: 0; }
.csl-replyview .csl-scroll { overflow-y: auto; overflow-x: hidden; overflow-wrap: anywhere; }
.csl-replyview .csl-tok { border-radius: 2px; }
.csl-replyview .csl-clickable .csl-tok { cursor: pointer; }
.csl-replyview .csl-tok.csl-selected { outline: 2px solid #3b6fd8; outline-offset: 0; }
.csl-replyview .csl-end { color: #777; border: 1px dashed #aaa; font-size: 80%; padding: 0 3px;
  margin-left: 3px; white-space: nowrap; }
.csl-clip > .widget-html-content { min-width: 0; overflow: hidden; }
.csl-pop { position: fixed; z-index: 100000; max-width: 24em; padding: 3px 8px; border-radius: 4px;
  background: var(--jp-layout-color0, #fff); color: var(--jp-ui-font-color0, #222);
  border: 1px solid var(--jp-border-color1, #bbb); box-shadow: 0 2px 6px rgba(0, 0, 0, .25);
  font-size: 85%; white-space: pre; pointer-events: none; font-family: var(--jp-ui-font-family, sans-serif); }
.csl-pop .csl-alt-head { font-weight: bold; border-bottom: 1px solid var(--jp-border-color2, #ddd);
  margin-bottom: 2px; }
"""

REPLY_MAX_HEIGHT = "24em"


class ReplyView(anywidget.AnyWidget):
    """HTML (``value``) in a scroll box capped at ``max_height`` ("" or "none": no cap); ``selected``
    is the index of the clicked token (-1: none) when ``clickable``."""

    _esm = _ESM
    _css = _CSS
    value = traitlets.Unicode("").tag(sync=True)
    max_height = traitlets.Unicode(REPLY_MAX_HEIGHT).tag(sync=True)
    selected = traitlets.Int(-1).tag(sync=True)
    clickable = traitlets.Bool(False).tag(sync=True)
