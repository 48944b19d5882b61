// The playground: builds an OpenAI-compatible chat request from the form, streams it through the
// dashboard's same-origin endpoint (session cookie + CSRF header; the page never holds a key), and
// shows the answer, reasoning, tool calls, usage and cost. Model and user text only ever goes
// through textContent / value, never innerHTML.
"use strict";
(function () {
  const config = JSON.parse(document.getElementById("playground-config").textContent);
  const csrf = document.getElementById("csrf").value;
  const $ = (id) => document.getElementById(id);
  const form = $("chat-form");
  const modelSelect = $("pg-model");
  let toolsValid = true;
  let controller = null;
  let codeLang = "curl";

  for (const m of config.models) {
    const option = document.createElement("option");
    option.value = m.name;
    option.textContent = m.name + (m.aliases.length ? " (" + m.aliases.join(", ") + ")" : "");
    modelSelect.appendChild(option);
  }
  const model = () => config.models.find((m) => m.name === modelSelect.value);
  function describeModel() {
    const m = model();
    if (!m) return;
    const per = (micros) => "$" + (micros / 1e6).toFixed(2);
    let note = "Price per million tokens: " + per(m.price.input) + " in, " + per(m.price.output) + " out. Thinking: " + m.thinking + ".";
    if (m.served_by) note += " Answered by the local stand-in model " + m.served_by + ".";
    $("pg-model-note").textContent = note;
  }
  modelSelect.addEventListener("change", () => { describeModel(); renderCode(); });
  describeModel();

  let messageCount = 1;
  function addMessage(role, content) {
    messageCount += 1;
    const row = document.createElement("div");
    row.className = "message";
    const select = document.createElement("select");
    select.className = "role";
    select.setAttribute("aria-label", "Role of message " + messageCount);
    for (const r of ["user", "assistant"]) {
      const o = document.createElement("option");
      o.textContent = r;
      select.appendChild(o);
    }
    select.value = role;
    const text = document.createElement("textarea");
    text.className = "content";
    text.rows = 3;
    text.setAttribute("aria-label", "Text of message " + messageCount);
    text.value = content;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "Remove";
    remove.setAttribute("aria-label", "Remove message " + messageCount);
    remove.addEventListener("click", () => { row.remove(); renderCode(); });
    row.append(select, text, remove);
    $("pg-messages").appendChild(row);
    return text;
  }
  $("pg-add").addEventListener("click", () => addMessage("user", "").focus());

  // Function tools, validated as you type.
  function parseTools() {
    const text = $("pg-tools").value.trim();
    if (!text) return { tools: null };
    let value;
    try {
      value = JSON.parse(text);
    } catch (e) {
      return { error: "Not JSON: " + e.message };
    }
    if (!Array.isArray(value)) return { error: "Tools must be a JSON array." };
    for (let i = 0; i < value.length; i++) {
      const t = value[i];
      if (!t || typeof t !== "object" || t.type !== "function") return { error: "tools[" + i + "].type must be \"function\"." };
      const f = t.function;
      if (!f || typeof f !== "object" || typeof f.name !== "string" || !/^[A-Za-z0-9_-]{1,64}$/.test(f.name)) {
        return { error: "tools[" + i + "].function.name must be 1 to 64 letters, digits, _ or -." };
      }
      if (f.parameters !== undefined && (typeof f.parameters !== "object" || f.parameters === null || Array.isArray(f.parameters))) {
        return { error: "tools[" + i + "].function.parameters must be a JSON Schema object." };
      }
    }
    return { tools: value.length ? value : null };
  }
  function checkTools() {
    const parsed = parseTools();
    const status = $("pg-tools-status");
    toolsValid = !parsed.error;
    $("pg-tools").setAttribute("aria-invalid", toolsValid ? "false" : "true");
    status.className = toolsValid ? "hint" : "error";
    status.textContent = parsed.error || (parsed.tools ? parsed.tools.length + " tool(s), valid." : "No tools.");
    $("pg-send").disabled = !toolsValid || controller !== null;
    return parsed;
  }
  $("pg-tools").addEventListener("input", () => { checkTools(); renderCode(); });

  function numberOf(id) {
    const text = $(id).value.trim();
    return text === "" ? null : Number(text);
  }
  function buildRequest() {
    const messages = [];
    const system = $("pg-system").value;
    if (system.trim()) messages.push({ role: "system", content: system });
    for (const row of document.querySelectorAll("#pg-messages .message")) {
      const content = row.querySelector(".content").value;
      if (content.trim()) messages.push({ role: row.querySelector(".role").value, content: content });
    }
    const body = { model: modelSelect.value, messages: messages, stream: true, stream_options: { include_usage: true } };
    const max = numberOf("pg-max");
    if (max !== null) body.max_completion_tokens = max;
    const temperature = numberOf("pg-temperature");
    if (temperature !== null) body.temperature = temperature;
    const topP = numberOf("pg-top-p");
    if (topP !== null) body.top_p = topP;
    const seed = numberOf("pg-seed");
    if (seed !== null) body.seed = seed;
    const thinking = $("pg-thinking").value;
    if (thinking) body.reasoning_effort = thinking;
    const tools = parseTools().tools;
    if (tools) body.tools = tools;
    return body;
  }

  // ---- show code ----
  function pyLiteral(value, indent) {
    return JSON.stringify(value, null, 4).replace(/\n/g, "\n" + indent)
      .replace(/\btrue\b/g, "True").replace(/\bfalse\b/g, "False").replace(/\bnull\b/g, "None");
  }
  function shellQuote(text) {
    return "'" + text.replace(/'/g, "'\\''") + "'";
  }
  function runwareTask(body) {
    const system = body.messages.find((m) => m.role === "system");
    const settings = {};
    if (system) settings.systemPrompt = system.content;
    if (body.max_completion_tokens) settings.maxTokens = body.max_completion_tokens;
    if (body.temperature !== undefined) settings.temperature = body.temperature;
    if (body.top_p !== undefined) settings.topP = body.top_p;
    if (body.reasoning_effort) settings.thinkingLevel = body.reasoning_effort;
    const task = {
      model: body.model,
      messages: body.messages.filter((m) => m.role !== "system"),
      settings: settings,
      includeUsage: true,
      includeCost: true,
    };
    if (body.seed !== undefined) task.seed = body.seed;
    if (body.tools) {
      task.tools = body.tools.map((t) => ({
        type: "function", name: t.function.name, description: t.function.description || "",
        schema: t.function.parameters || { type: "object", properties: {} },
      }));
    }
    return task;
  }
  function renderCode() {
    const body = buildRequest();
    const base = config.base_url;
    let text;
    if (codeLang === "curl") {
      text = "curl -N " + base + "/v1/chat/completions \\\n  -H \"Authorization: Bearer $KIMISERVE_API_KEY\" \\\n"
        + "  -H 'Content-Type: application/json' \\\n  -d " + shellQuote(JSON.stringify(body, null, 2));
    } else if (codeLang === "openai") {
      const extra = Object.assign({}, body);
      delete extra.model; delete extra.messages; delete extra.stream; delete extra.stream_options;
      let args = "";
      for (const [k, v] of Object.entries(extra)) args += "    " + k + "=" + pyLiteral(v, "    ") + ",\n";
      text = "import os\nfrom openai import OpenAI\n\nclient = OpenAI(base_url=\"" + base + "/v1\", api_key=os.environ[\"KIMISERVE_API_KEY\"])\n"
        + "stream = client.chat.completions.create(\n    model=" + JSON.stringify(body.model) + ",\n"
        + "    messages=" + pyLiteral(body.messages, "    ") + ",\n" + args
        + "    stream=True,\n    stream_options={\"include_usage\": True},\n)\n"
        + "for chunk in stream:\n    if chunk.choices and chunk.choices[0].delta.content:\n"
        + "        print(chunk.choices[0].delta.content, end=\"\", flush=True)\n";
    } else {
      const ws = base.replace(/^http/, "ws") + "/v1";
      text = "import asyncio, os\nfrom runware import Runware\nfrom runware.types import ITextInference\n\n\n"
        + "async def main() -> None:\n    client = Runware(api_key=os.environ[\"KIMISERVE_API_KEY\"], url=\"" + ws + "\")\n"
        + "    await client.connect()\n    task = " + pyLiteral(runwareTask(body), "    ") + "\n"
        + "    [item] = await client.textInference(ITextInference(**task))\n    print(item.text, item.cost)\n"
        + "    await client.disconnect()\n\n\nasyncio.run(main())\n";
    }
    $("pg-code-text").textContent = text;
  }
  $("pg-code-toggle").addEventListener("click", () => {
    const box = $("pg-code");
    box.hidden = !box.hidden;
    $("pg-code-toggle").setAttribute("aria-expanded", String(!box.hidden));
    $("pg-code-toggle").textContent = box.hidden ? "Show code" : "Hide code";
    renderCode();
  });
  for (const tab of document.querySelectorAll("#pg-code [role=tab]")) {
    tab.addEventListener("click", () => {
      codeLang = tab.dataset.lang;
      for (const t of document.querySelectorAll("#pg-code [role=tab]")) t.setAttribute("aria-selected", String(t === tab));
      renderCode();
    });
  }
  form.addEventListener("input", () => { if (!$("pg-code").hidden) renderCode(); });

  // ---- streaming ----
  function showError(message) {
    const box = $("pg-error");
    box.hidden = false;
    box.textContent = message;
  }
  function cost(usage) {
    const m = model();
    if (!m || !usage) return null;
    const cached = (usage.prompt_tokens_details && usage.prompt_tokens_details.cached_tokens) || 0;
    const micros = ((usage.prompt_tokens - cached) * m.price.input + cached * m.price.cached
      + usage.completion_tokens * m.price.output) / 1e6;
    return (micros / 1e6).toFixed(6);
  }
  function handleChunk(chunk, toolCalls) {
    for (const choice of chunk.choices || []) {
      const delta = choice.delta || {};
      const reasoning = delta.reasoning_content || delta.reasoning;
      if (reasoning) {
        $("pg-reasoning-box").hidden = false;
        $("pg-reasoning").append(document.createTextNode(reasoning));
      }
      if (delta.content) $("pg-answer").append(document.createTextNode(delta.content));
      for (const call of delta.tool_calls || []) {
        const slot = toolCalls[call.index] || (toolCalls[call.index] = { id: "", name: "", arguments: "" });
        if (call.id) slot.id = call.id;
        if (call.function && call.function.name) slot.name += call.function.name;
        if (call.function && call.function.arguments) slot.arguments += call.function.arguments;
        showToolCalls(toolCalls);
      }
      if (choice.finish_reason) $("pg-answer").dataset.finish = choice.finish_reason;
    }
    if (chunk.usage) {
      const u = chunk.usage;
      const reasoningTokens = (u.completion_tokens_details && u.completion_tokens_details.reasoning_tokens) || 0;
      $("pg-usage").textContent = "Usage: " + u.prompt_tokens + " prompt, " + u.completion_tokens + " completion ("
        + reasoningTokens + " reasoning) tokens · cost $" + cost(u);
    }
  }
  function streamError(chunk) {
    const error = chunk.error || (chunk.errors && chunk.errors[0]) || {};
    return typeof error === "string" ? error : error.message || "The stream failed.";
  }
  function uuid4() {
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    return h.slice(0, 8) + "-" + h.slice(8, 12) + "-" + h.slice(12, 16) + "-" + h.slice(16, 20) + "-" + h.slice(20);
  }
  function showToolCalls(toolCalls) {
    $("pg-tool-calls").hidden = false;
    $("pg-tool-calls").textContent = "Tool calls:\n" + toolCalls.map((c) => c.name + "(" + c.arguments + ")  " + c.id).join("\n");
  }
  // Runware: delta.text / delta.reasoningContent / delta.tools; the terminal chunk has usage and cost.
  function handleTaskChunk(chunk, toolCalls) {
    const delta = chunk.delta || {};
    if (delta.reasoningContent) {
      $("pg-reasoning-box").hidden = false;
      $("pg-reasoning").append(document.createTextNode(delta.reasoningContent));
    }
    if (delta.text) $("pg-answer").append(document.createTextNode(delta.text));
    for (const call of delta.tools || []) {
      toolCalls.push({ id: call.id || "", name: call.name || "", arguments: JSON.stringify(call.input || {}) });
      showToolCalls(toolCalls);
    }
    if (chunk.finishReason) $("pg-answer").dataset.finish = chunk.finishReason;
    if (chunk.usage) {
      const u = chunk.usage;
      $("pg-usage").textContent = "Usage: " + u.promptTokens + " prompt, " + u.completionTokens + " completion ("
        + (u.thinkingTokens || 0) + " reasoning) tokens · cost $" + (chunk.cost !== undefined ? Number(chunk.cost).toFixed(6) : "?");
    }
  }
  async function send(event) {
    event.preventDefault();
    if (checkTools().error) return;
    const body = buildRequest();
    for (const id of ["pg-answer", "pg-reasoning", "pg-usage"]) $(id).textContent = "";
    $("pg-tool-calls").hidden = true;
    $("pg-reasoning-box").hidden = true;
    $("pg-error").hidden = true;
    delete $("pg-answer").dataset.finish;
    $("pg-answer").dataset.state = "streaming";
    controller = new AbortController();
    $("pg-send").disabled = true;
    $("pg-stop").disabled = false;
    const toolCalls = [];
    const runware = $("pg-protocol").value === "runware";
    const payload = runware
      ? [Object.assign({ taskType: "textInference", taskUUID: uuid4(), deliveryMethod: "stream" }, runwareTask(body))]
      : body;
    try {
      const response = await fetch(runware ? "api/tasks" : "api/chat", {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify(payload),
        signal: controller.signal,
        credentials: "same-origin",
      });
      if (!response.ok) {
        let message = "HTTP " + response.status;
        try {
          const err = await response.json();
          if (err.error) message += ": " + err.error.message + (err.error.param ? " (" + err.error.param + ")" : "");
          if (err.errors && err.errors[0]) {
            const first = err.errors[0];
            message += ": " + first.message + (first.parameter ? " (" + first.parameter + ")" : "");
          }
        } catch (e) { /* not JSON */ }
        showError(message);
        return;
      }
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          for (const line of frame.split("\n")) {
            if (!line.startsWith("data:")) continue;
            const data = line.slice(5).trim();
            if (data === "[DONE]") continue;
            const chunk = JSON.parse(data);
            if (chunk.error || chunk.errors) showError(streamError(chunk));
            else if (runware) handleTaskChunk(chunk, toolCalls);
            else handleChunk(chunk, toolCalls);
          }
        }
      }
    } catch (e) {
      if (e.name !== "AbortError") showError(String(e.message || e));
    } finally {
      controller = null;
      $("pg-answer").dataset.state = "done";
      $("pg-stop").disabled = true;
      checkTools();
    }
  }
  form.addEventListener("submit", send);
  $("pg-stop").addEventListener("click", () => { if (controller) controller.abort(); });
  checkTools();
})();
