// chatstream_lab web chat: streams replies over SSE (fetch + ReadableStream), Stop, Regenerate, Clear.
// All text is rendered with textContent: model output and user input are never parsed as HTML.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const els = {
    messages: $("messages"), input: $("input"), form: $("composer"), send: $("send"),
    stop: $("stop"), regenerate: $("regenerate"), clear: $("clear"), status: $("status"),
    error: $("error"),
  };
  const TOKEN_KEY = "chatstream_lab.token";
  let controller = null; // AbortController of the reply in flight

  // A bearer token comes in the URL's fragment (#token=...), which browsers never send to the
  // server, so it never reaches an access log or a proxy. It is kept for this tab
  // (sessionStorage) and removed from the address bar; it is sent only as a bearer header.
  function token() {
    const hash = new URLSearchParams(window.location.hash.replace(/^#/, ""));
    const fromUrl = hash.get("token");
    if (fromUrl) {
      try { sessionStorage.setItem(TOKEN_KEY, fromUrl); } catch (e) { /* private mode */ }
      hash.delete("token");
      const rest = hash.toString();
      history.replaceState(null, "", window.location.pathname + window.location.search + (rest ? "#" + rest : ""));
      window.__chatstreamToken = fromUrl;
    }
    if (window.__chatstreamToken) return window.__chatstreamToken;
    try { return sessionStorage.getItem(TOKEN_KEY); } catch (e) { return null; }
  }
  const authToken = token();

  function headers(extra) {
    const h = Object.assign({}, extra || {});
    if (authToken) h["Authorization"] = "Bearer " + authToken;
    return h;
  }

  function setStatus(text) { els.status.textContent = text || ""; }
  function showError(text) {
    els.error.textContent = text || "";
    els.error.hidden = !text;
  }

  function addMessage(role, text) {
    const div = document.createElement("div");
    div.className = "msg " + role;
    const body = document.createElement("span");
    body.className = "text";
    body.textContent = text || "";
    div.appendChild(body);
    els.messages.appendChild(div);
    els.messages.scrollTop = els.messages.scrollHeight;
    return div;
  }
  function setText(div, text) { div.querySelector(".text").textContent = text; }
  function getText(div) { return div.querySelector(".text").textContent; }
  function addNote(div, text) {
    const note = document.createElement("span");
    note.className = "note";
    note.textContent = text;
    div.appendChild(note);
  }
  function lastMessage(role) {
    const all = els.messages.querySelectorAll(".msg." + role);
    return all.length ? all[all.length - 1] : null;
  }

  function setBusy(busy) {
    els.send.disabled = busy;
    els.stop.hidden = !busy;
    els.clear.disabled = busy;
    els.regenerate.disabled = busy || !lastMessage("user");
  }

  async function errorMessage(response) {
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) return body.error.message;
    } catch (e) { /* not JSON */ }
    return "HTTP " + response.status;
  }

  // Parse an SSE body: yields {event, data} for each frame.
  async function* sseEvents(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const frame = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let event = "message";
        const data = [];
        for (const line of frame.split("\n")) {
          if (line.startsWith("event:")) event = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
      }
    }
  }

  async function generate(userInput, regenerate) {
    showError("");
    let userDiv = null;
    let previous = null; // the reply being regenerated, restored if nothing new arrives
    if (regenerate) {
      previous = lastMessage("assistant");
      if (previous && previous === els.messages.lastElementChild) previous.remove();
      else previous = null;
    } else {
      userDiv = addMessage("user", userInput);
    }
    const reply = addMessage("assistant", "");
    reply.classList.add("streaming");
    controller = new AbortController();
    setBusy(true);
    setStatus("Sending…");
    let text = "";
    let ended = false;
    try {
      const response = await fetch("chat_stream", {
        method: "POST",
        headers: headers({ "Content-Type": "application/json", "Accept": "text/event-stream" }),
        body: JSON.stringify({ user_input: regenerate ? null : userInput, regenerate: !!regenerate }),
        credentials: "same-origin",
        signal: controller.signal,
      });
      if (!response.ok) {
        let msg = await errorMessage(response);
        if (response.status === 429) {
          const wait = response.headers.get("Retry-After");
          msg = "Server busy: " + msg + (wait ? " (retry in " + wait + " s)" : "");
        }
        throw new Error(msg);
      }
      for await (const { event, data } of sseEvents(response)) {
        if (event === "queued") {
          setStatus("Waiting in queue: position " + data.position);
        } else if (event === "delta") {
          setStatus("Generating…");
          text += data.text;
          setText(reply, text);
          els.messages.scrollTop = els.messages.scrollHeight;
        } else if (event === "done") {
          ended = true;
          text = data.text;
          setText(reply, text);
          const u = data.usage || {};
          const speed = u.tokens_per_s ? ", " + u.tokens_per_s.toFixed(1) + " tok/s" : "";
          setStatus("Done (" + data.finish_reason + ", " + (u.completion_tokens || 0) + " tokens" + speed + ")");
          if (data.finish_reason === "length") addNote(reply, "(stopped at the token limit)");
        } else if (event === "error") {
          ended = true;
          throw new Error(data.message || "generation failed");
        }
      }
      if (!ended) throw new Error("the connection closed before the reply finished");
    } catch (err) {
      const aborted = err && err.name === "AbortError";
      if (text) {
        addNote(reply, aborted ? "(stopped)" : "(interrupted)");
      } else {
        // Nothing generated: the server kept the history as it was, so the page does too.
        reply.remove();
        if (previous) els.messages.appendChild(previous);
        if (userDiv) {
          userDiv.remove();
          if (!els.input.value) els.input.value = userInput;
        }
      }
      setStatus(aborted ? "Stopped" : "");
      if (!aborted) showError(err && err.message ? err.message : String(err));
    } finally {
      reply.classList.remove("streaming");
      controller = null;
      setBusy(false);
    }
  }

  async function loadHistory() {
    try {
      const response = await fetch("get_prompt", { headers: headers(), credentials: "same-origin" });
      if (!response.ok) { showError(await errorMessage(response)); return; }
      const body = await response.json();
      for (const m of body.messages || []) {
        if (m.role === "user" || m.role === "assistant") addMessage(m.role, m.content);
      }
    } catch (e) { /* the page still works without history */ }
    setBusy(false);
  }

  els.form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = els.input.value;
    if (!text.trim() || controller) return;
    els.input.value = "";
    generate(text, false);
  });
  els.input.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      els.form.requestSubmit();
    }
  });
  els.stop.addEventListener("click", () => { if (controller) controller.abort(); });
  els.regenerate.addEventListener("click", () => { if (!controller) generate(null, true); });
  els.clear.addEventListener("click", async () => {
    if (controller) return;
    showError("");
    const response = await fetch("clear_context", {
      method: "POST", headers: headers({ "Content-Type": "application/json" }), body: "{}", credentials: "same-origin",
    });
    if (!response.ok) { showError(await errorMessage(response)); return; }
    els.messages.replaceChildren();
    setStatus("Cleared");
    setBusy(false);
  });

  // While the server's engine is still being built, /health answers 503 "starting": say so (a
  // message sent meanwhile waits in the queue) and look again until it can serve.
  const WARMING = "Warming up: the model is loading…";
  async function watchWarmup() {
    let starting = false;
    try {
      const response = await fetch("health", { cache: "no-store" });
      const body = await response.json();
      starting = Boolean(body && body.status === "starting");
    } catch (e) { /* not reachable now: nothing to report */ }
    if (starting) {
      if (!controller) setStatus(WARMING);
      setTimeout(watchWarmup, 1000);
    } else if (els.status.textContent === WARMING) {
      setStatus("");
    }
  }

  loadHistory();
  watchWarmup();
})();
