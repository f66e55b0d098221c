// The flow editor: a textarea with a line gutter, checked while typing through the page's
// validate route, problems marked on their lines, saved and test-run with the request header
// the server demands. Flow text is only ever a textarea's value or an element's textContent.
"use strict";

(() => {
  const REQUEST_HEADER = { "X-Adxflow-Request": "1" };
  const CHECK_AFTER_MS = 400;
  const INDENT = "  ";
  const timeFormat = new Intl.DateTimeFormat(undefined, {
    weekday: "short", year: "numeric", month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", timeZoneName: "short",
  });

  const form = document.querySelector("[data-editor-form]");
  if (!form) return;
  const text = form.querySelector("[data-editor-text]");
  const gutter = form.querySelector("[data-gutter]");
  const problemsBox = document.querySelector("[data-problems]");
  const summaryBox = document.querySelector("[data-draft-summary]");
  const saveResult = document.querySelector("[data-save-result]");
  const status = form.querySelector("[data-action-result]");
  const testButton = form.querySelector("[data-test-run]");
  let checkTimer = null;
  let checking = null;
  let leaving = false;

  function say(message, failed) {
    status.textContent = message;
    status.classList.toggle("error", Boolean(failed));
  }

  // -- the gutter ---------------------------------------------------------

  function lineCount() {
    return text.value.split("\n").length;
  }

  function renderGutter() {
    const wanted = lineCount();
    while (gutter.children.length < wanted) {
      const item = document.createElement("li");
      item.dataset.line = String(gutter.children.length + 1);
      item.textContent = item.dataset.line;
      gutter.appendChild(item);
    }
    while (gutter.children.length > wanted) gutter.lastElementChild.remove();
    gutter.scrollTop = text.scrollTop;
  }

  // The problems as the list shows them: each button carries its place.
  function markLines() {
    for (const item of gutter.querySelectorAll("li.invalid")) {
      item.classList.remove("invalid");
      item.removeAttribute("aria-invalid");
      item.removeAttribute("aria-describedby");
      item.removeAttribute("title");
    }
    const items = problemsBox.querySelectorAll("li");
    for (const problem of items) {
      const button = problem.querySelector("[data-goto-line]");
      if (!button) continue;
      const mark = gutter.children[Number(button.dataset.gotoLine) - 1];
      if (!mark) continue;
      mark.classList.add("invalid");
      mark.setAttribute("aria-invalid", "true");
      mark.setAttribute("aria-describedby", problem.id);
      mark.title = `${mark.title ? `${mark.title}\n` : ""}${problem.textContent.replace(/\s+/g, " ").trim()}`;
    }
    if (items.length > 0) text.setAttribute("aria-invalid", "true");
    else text.removeAttribute("aria-invalid");
  }

  function offsetOf(line, column) {
    const lines = text.value.split("\n");
    let offset = 0;
    for (let index = 0; index < Math.min(line - 1, lines.length); index += 1) offset += lines[index].length + 1;
    const here = lines[Math.min(line, lines.length) - 1] || "";
    return offset + Math.min(Math.max(column - 1, 0), here.length);
  }

  function goTo(button) {
    const line = Number(button.dataset.gotoLine);
    const start = offsetOf(line, Number(button.dataset.gotoColumn || 1));
    let end = start;
    if (button.dataset.endLine) end = offsetOf(Number(button.dataset.endLine), Number(button.dataset.endColumn || 1));
    if (end <= start) end = offsetOf(line, Number.MAX_SAFE_INTEGER);
    text.focus();
    text.setSelectionRange(start, end);
    const lineHeight = parseFloat(getComputedStyle(text).lineHeight) || 20;
    text.scrollTop = Math.max(0, (line - 3) * lineHeight);
    gutter.scrollTop = text.scrollTop;
  }

  // -- problems and the draft's trigger -------------------------------------

  function showProblems(problems) {
    problemsBox.replaceChildren();
    if (problems.length === 0) {
      const none = document.createElement("p");
      none.className = "muted";
      none.dataset.problemsNone = "";
      none.textContent = "None found.";
      problemsBox.appendChild(none);
      markLines();
      return;
    }
    const list = document.createElement("ol");
    list.className = "problems";
    problems.forEach((problem, index) => {
      const item = document.createElement("li");
      item.id = `problem-${index + 1}`;
      if (problem.line) {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "link";
        button.dataset.gotoLine = String(problem.line);
        button.dataset.gotoColumn = String(problem.column || 1);
        if (problem.end_line) {
          button.dataset.endLine = String(problem.end_line);
          button.dataset.endColumn = String(problem.end_column || 1);
        }
        button.textContent = `line ${problem.line}, column ${problem.column || 1}`;
        item.append(button, ": ");
      }
      if (problem.field) {
        const field = document.createElement("code");
        field.textContent = problem.field;
        item.append(field, " ");
      }
      const message = document.createElement("span");
      message.className = "problem-message";
      message.textContent = problem.message;
      item.appendChild(message);
      list.appendChild(item);
    });
    problemsBox.appendChild(list);
    markLines();
  }

  function showSummary(flow) {
    summaryBox.replaceChildren();
    if (!flow) {
      const none = document.createElement("p");
      none.className = "muted";
      none.textContent = "Shown once the flow is valid.";
      summaryBox.appendChild(none);
      return;
    }
    const words = document.createElement("p");
    const name = document.createElement("code");
    name.textContent = flow.name;
    words.append(name, `: ${flow.schedule}`);
    summaryBox.appendChild(words);
    if (flow.next_fires && flow.next_fires.length > 0) {
      const label = document.createElement("p");
      label.className = "muted";
      label.textContent = "Next runs:";
      const list = document.createElement("ul");
      list.className = "next-fires";
      for (const fire of flow.next_fires) {
        const item = document.createElement("li");
        const time = document.createElement("time");
        time.dateTime = fire;
        time.textContent = timeFormat.format(new Date(fire));
        time.title = fire;
        item.appendChild(time);
        list.appendChild(item);
      }
      summaryBox.append(label, list);
    }
  }

  async function check() {
    checkTimer = null;
    const sent = text.value;
    if (checking) checking.abort();
    checking = new AbortController();
    try {
      const response = await fetch("/ui/flows:validate", {
        method: "POST",
        credentials: "same-origin",
        headers: { ...REQUEST_HEADER, "Content-Type": "application/yaml" },
        body: sent,
        signal: checking.signal,
      });
      const body = await response.json();
      if (sent !== text.value) return;
      if (!response.ok) {
        say((body.error && body.error.message) || `The check failed: HTTP ${response.status}`, true);
        return;
      }
      showProblems(body.problems || []);
      showSummary(body.flow);
      form.dataset.checked = body.valid ? "valid" : "invalid";
    } catch (error) {
      if (error.name !== "AbortError") say(`The check failed: ${error.message}`, true);
    }
  }

  function checkSoon() {
    if (checkTimer !== null) window.clearTimeout(checkTimer);
    form.dataset.checked = "pending";
    checkTimer = window.setTimeout(check, CHECK_AFTER_MS);
  }

  // -- keys ---------------------------------------------------------------

  function lineStart(offset) {
    return text.value.lastIndexOf("\n", offset - 1) + 1;
  }

  function indent(outdent) {
    const { selectionStart: start, selectionEnd: end, value } = text;
    if (!outdent && start === end) {
      text.setRangeText(INDENT, start, end, "end");
      return;
    }
    const first = lineStart(start);
    const block = value.slice(first, end);
    const changed = outdent
      ? block.replace(/^ {1,2}/gm, "")
      : block.replace(/^/gm, INDENT);
    text.setRangeText(changed, first, end, "select");
  }

  text.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      leaving = true;
      return;
    }
    if (event.key === "Tab" && !leaving && !event.ctrlKey && !event.altKey && !event.metaKey) {
      event.preventDefault();
      indent(event.shiftKey);
      renderGutter();
      checkSoon();
      return;
    }
    leaving = false;
  });
  text.addEventListener("input", () => {
    renderGutter();
    checkSoon();
  });
  text.addEventListener("scroll", () => {
    gutter.scrollTop = text.scrollTop;
  });

  document.addEventListener("click", (event) => {
    const button = event.target.closest("[data-goto-line]");
    if (button) goTo(button);
  });

  // -- saving and test runs -----------------------------------------------

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector("[data-save]");
    button.disabled = true;
    say("Saving…", false);
    try {
      const response = await fetch(form.action, {
        method: "POST",
        credentials: "same-origin",
        headers: { ...REQUEST_HEADER, "Content-Type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams(new FormData(form)),
      });
      if (response.ok) {
        window.location.assign(response.url);
        return;
      }
      // A refusal is the editor page again; its notices and problems replace these, the text stays.
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
      const result = fresh.querySelector("[data-save-result]");
      const problems = fresh.querySelector("[data-problems]");
      const explained = Boolean(result && result.textContent.trim());
      if (result) saveResult.replaceChildren(...result.childNodes);
      if (problems) {
        problemsBox.replaceChildren(...problems.childNodes);
        markLines();
      }
      say(explained ? "Not saved: see above." : `Not saved: HTTP ${response.status}`, true);
    } catch (error) {
      say(`Not saved: ${error.message}`, true);
    } finally {
      button.disabled = false;
    }
  });

  testButton.addEventListener("click", async () => {
    testButton.disabled = true;
    say("Starting a test run…", false);
    try {
      const response = await fetch("/ui/flows:test", {
        method: "POST",
        credentials: "same-origin",
        headers: { ...REQUEST_HEADER, "Content-Type": "application/json" },
        body: JSON.stringify({ flow: text.value, parameters: {} }),
      });
      let body = {};
      try { body = await response.json(); } catch (ignored) { body = {}; }
      if (response.ok && body.run_id) {
        window.location.assign(`/ui/runs/${encodeURIComponent(body.run_id)}`);
        return;
      }
      if (Array.isArray(body.problems)) showProblems(body.problems);
      const message = (body.error && body.error.message) || `HTTP ${response.status}`;
      say(`No test run: ${message}`, true);
    } catch (error) {
      say(`No test run: ${error.message}`, true);
    } finally {
      testButton.disabled = false;
    }
  });

  for (const element of document.querySelectorAll("[data-no-script]")) element.hidden = true;
  testButton.hidden = false;
  renderGutter();
  markLines();
  check();
})();
