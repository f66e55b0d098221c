// The run history pages read without JavaScript; this adds local times,
// refreshing of unfinished runs, and the buttons (which need a custom
// request header the server demands of every state-changing request).
"use strict";

(() => {
  const REQUEST_HEADER = { "X-Adxflow-Request": "1" };
  const POLL_MS = 2500;
  let pollTimer = null;

  const timeFormat = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short",
  });
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;

  function localTimes(root) {
    for (const element of root.querySelectorAll("time[datetime]")) {
      const instant = new Date(element.getAttribute("datetime"));
      if (Number.isNaN(instant.getTime())) continue;
      element.title = `${element.getAttribute("datetime")} (shown in ${zone})`;
      element.textContent = timeFormat.format(instant);
    }
  }

  function reveal(root) {
    for (const element of root.querySelectorAll("[data-post], [data-toggle-flow], [data-logout], [data-silence], [data-restore], [data-run-form]")) {
      element.hidden = false;
    }
  }

  function say(message, failed) {
    const target = document.querySelector("[data-action-result]");
    if (!target) return;
    target.textContent = message;
    target.classList.toggle("error", Boolean(failed));
  }

  async function errorMessage(response) {
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) return body.error.message;
    } catch (ignored) {
      // Not JSON: fall back to the status line.
    }
    return `${response.status} ${response.statusText}`;
  }

  async function post(url, body) {
    const init = { method: "POST", credentials: "same-origin", headers: { ...REQUEST_HEADER } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(url, init);
  }

  // A form's fields (URLSearchParams), posted with the header.
  async function postFields(url, fields) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { ...REQUEST_HEADER, "Content-Type": "application/x-www-form-urlencoded" },
      body: fields,
    });
  }

  async function act(button, url, body, after) {
    button.disabled = true;
    say("Working…", false);
    try {
      const response = await post(url, body);
      if (!response.ok) {
        say(await errorMessage(response), true);
        return;
      }
      await after(response);
    } catch (error) {
      say(`The request failed: ${error.message}`, true);
    } finally {
      button.disabled = false;
    }
  }

  document.addEventListener("click", (event) => {
    const button = event.target.closest("button");
    if (!button) return;
    if (button.dataset.post) {
      const current = document.querySelector("[data-run-id]");
      act(button, button.dataset.post, undefined, async (response) => {
        let body = {};
        try { body = await response.json(); } catch (ignored) { body = {}; }
        const runId = body && body.run_id;
        if (runId && current && runId !== current.dataset.runId) {
          window.location.assign(`/ui/runs/${encodeURIComponent(runId)}`);
        } else {
          window.location.reload();
        }
      });
    } else if (button.dataset.toggleFlow) {
      const name = button.dataset.toggleFlow;
      const enabled = button.dataset.enabled === "true";
      // The version the page shows: a flow changed since then is not switched unseen.
      const version = Number(button.dataset.version);
      act(button, `/ui/flows/${encodeURIComponent(name)}/enabled`, { enabled, version }, async () => {
        window.location.reload();
      });
    } else if (button.hasAttribute("data-logout")) {
      act(button, "/ui/logout", undefined, async () => {
        window.location.assign("/ui/login");
      });
    }
  });

  // A form that changes something (a silence, a restore): its fields posted with the header, then the page the
  // server answers with (it redirects back to the page the form is on).
  document.addEventListener("submit", async (event) => {
    const form = event.target.closest("form[data-post-form]");
    if (!form) return;
    event.preventDefault();
    const button = form.querySelector("button[type=submit]");
    if (button) button.disabled = true;
    say("Working…", false);
    try {
      const response = await postFields(form.action, new URLSearchParams(new FormData(form)));
      if (!response.ok) {
        say(await errorMessage(response), true);
        return;
      }
      window.location.assign(response.url || window.location.href);
    } catch (error) {
      say(`The request failed: ${error.message}`, true);
    } finally {
      if (button) button.disabled = false;
    }
  });

  // The run-now form: its fields posted with the header. Started, the run's page (the server redirects
  // there); refused, the flow's page the server answers with, its errors next to the fields.
  document.addEventListener("submit", async (event) => {
    const form = event.target.closest("form[data-run-form]");
    if (!form) return;
    event.preventDefault();
    // The button pressed says which: a run, or a test run.
    const button = event.submitter || form.querySelector("button[type=submit]");
    const fields = new URLSearchParams(new FormData(form, button));
    if (button) button.disabled = true;
    say(button && button.value === "test" ? "Starting the test run…" : "Starting the run…", false);
    try {
      const response = await postFields(form.action, fields);
      if (response.ok) {
        window.location.assign(response.url);
        return;
      }
      if ((response.headers.get("Content-Type") || "").startsWith("text/html")) {
        const fresh = new DOMParser().parseFromString(await response.text(), "text/html").querySelector("main");
        const main = document.querySelector("main");
        if (fresh && main) {
          main.replaceChildren(...fresh.childNodes);
          init(main);
          const invalid = main.querySelector("[data-run-form] [aria-invalid=true], #run-problem");
          if (invalid) invalid.focus();
          return;
        }
      }
      say(await errorMessage(response), true);
    } catch (error) {
      say(`The request failed: ${error.message}`, true);
    } finally {
      if (button && button.isConnected) button.disabled = false;
    }
  });

  // -- refreshing unfinished runs -------------------------------------------

  function signature(run, detailed) {
    if (!detailed) return run.status;
    const steps = (run.steps || []).map((step) => `${step.step_id}:${step.attempt}:${step.status}`);
    return `${run.status}|${steps.join(",")}`;
  }

  function pageSignature(element, detailed) {
    if (!detailed) return element.dataset.runStatus;
    return element.dataset.runSignature || "";
  }

  async function replaceMain() {
    const response = await fetch(window.location.href, { credentials: "same-origin" });
    if (!response.ok) return;
    const fresh = new DOMParser().parseFromString(await response.text(), "text/html").querySelector("main");
    const main = document.querySelector("main");
    if (!fresh || !main) return;
    main.replaceChildren(...fresh.childNodes);
    init(main);
  }

  async function poll() {
    pollTimer = null;
    const detailed = Boolean(document.querySelector("article[data-run-id]"));
    const watched = [...document.querySelectorAll("[data-run-id][data-watch]")];
    if (watched.length === 0) return;
    let changed = false;
    for (const element of watched) {
      try {
        const response = await fetch(`/v1/runs/${encodeURIComponent(element.dataset.runId)}`, {
          credentials: "same-origin", headers: { Accept: "application/json" },
        });
        if (!response.ok) continue;
        const run = await response.json();
        if (signature(run, detailed) !== pageSignature(element, detailed)) changed = true;
      } catch (ignored) {
        // A missed poll is retried on the next tick.
      }
    }
    if (changed) {
      await replaceMain();
    } else {
      schedule();
    }
  }

  function schedule() {
    if (pollTimer === null && document.querySelector("[data-run-id][data-watch]")) {
      pollTimer = window.setTimeout(poll, POLL_MS);
    }
  }

  function init(root) {
    localTimes(root);
    reveal(root);
    schedule();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", () => init(document));
  } else {
    init(document);
  }
})();
