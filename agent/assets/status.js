// nodemedic status page: live updates over /v1/stream and the pause switch.
// Values are set with textContent only, never as HTML.
"use strict";
(function () {
  var boot = JSON.parse(document.getElementById("boot").textContent);
  var W = 300, H = 80, MAX_EVENTS = 50;
  var history = boot.history;
  var live = document.getElementById("live");

  function el(tag, text, attrs) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) { node.textContent = text; }
    for (var key in attrs || {}) { node.setAttribute(key, attrs[key]); }
    return node;
  }
  function setText(id, text) {
    var node = document.getElementById(id);
    if (node) { node.textContent = text; }
  }
  function announce(text) { live.textContent = text; }
  function isoUtc(epoch) { return new Date(epoch * 1000).toISOString().replace(/\.\d+Z$/, "Z"); }
  function cell(label, child) {
    var td = el("td", null, { "data-label": label });
    if (typeof child === "string") { td.textContent = child; } else { td.appendChild(child); }
    return td;
  }
  function timeEl(iso) { return el("time", iso, { datetime: iso }); }

  function conditionRow(c) {
    var tr = el("tr", null, { "class": "state-" + c.state });
    var state = cell("State", el("span", c.icon, { "class": "icon", "aria-hidden": "true" }));
    state.appendChild(document.createTextNode(" " + c.state));
    tr.appendChild(state);
    var name = cell("Condition", el("strong", c.name));
    Object.keys(c.labels).forEach(function (k) {
      name.appendChild(document.createTextNode(" "));
      name.appendChild(el("span", k + "=" + c.labels[k], { "class": "label" }));
    });
    tr.appendChild(name);
    var sev = cell("Severity", c.severity);
    sev.className = "sev-" + c.severity;
    tr.appendChild(sev);
    tr.appendChild(cell("Value", c.value));
    tr.appendChild(cell("Since", timeEl(c.since)));
    return tr;
  }

  function applySnapshot(s) {
    var health = document.getElementById("health");
    health.className = "health health-" + s.health.level;
    health.querySelector(".icon").textContent = s.health.icon;
    setText("health-text", s.health.text);
    setText("id-ready", s.ready.text);
    setText("id-link", s.link.text);
    setText("id-remediation", s.remediation.text);
    var up = document.getElementById("id-uptime");
    up.textContent = s.uptime + " (since ";
    up.appendChild(timeEl(s.started));
    up.appendChild(document.createTextNode(")"));
    var body = document.getElementById("cond-body");
    body.replaceChildren.apply(body, s.conditions.map(conditionRow));
    var none = document.getElementById("no-conditions");
    if (none) { none.hidden = s.conditions.length > 0; }
  }

  function eventRow(e) {
    var tr = el("tr");
    var when = isoUtc(Date.parse(e.time) / 1000);
    tr.appendChild(cell("Time", timeEl(when)));
    tr.appendChild(cell("Type", e.type.replace(/^io\.nodemedic\./, "")));
    tr.appendChild(cell("Subject", e.subject || ""));
    var data = JSON.stringify(e.data);
    if (data.length > 200) { data = data.slice(0, 200) + "\u2026"; }
    tr.appendChild(cell("Data", el("code", data)));
    return tr;
  }
  function addEvent(e) {
    var body = document.getElementById("events-body");
    body.insertBefore(eventRow(e), body.firstChild);
    while (body.rows.length > MAX_EVENTS) { body.deleteRow(body.rows.length - 1); }
    if (e.type.indexOf("io.nodemedic.condition.") === 0) {
      announce("Condition " + (e.subject || "") + ": " + e.type.split(".").pop());
    } else if (e.type.indexOf("io.nodemedic.remediation.") === 0) {
      reloadRunsSoon();
    }
  }
  // Runs are re-read from the server-rendered page (parsed inert, never run), so the
  // decision records look exactly as on a fresh load; open records stay open.
  var runsTimer = null;
  function reloadRunsSoon() {
    if (runsTimer === null) { runsTimer = setTimeout(reloadRuns, 500); }
  }
  function reloadRuns() {
    runsTimer = null;
    fetch("/", { cache: "no-store" })
      .then(function (r) { return r.text(); })
      .then(function (text) {
        var fresh = new DOMParser().parseFromString(text, "text/html").getElementById("runs");
        var mine = document.getElementById("runs");
        if (!fresh || !mine) { return; }
        var open = {};
        mine.querySelectorAll("details[open]").forEach(function (d) { open[d.dataset.run] = true; });
        fresh = document.importNode(fresh, true);
        fresh.querySelectorAll("details").forEach(function (d) { d.open = !!open[d.dataset.run]; });
        mine.replaceWith(fresh);
        announce("Remediation runs updated.");
      })
      .catch(function () { announce("Could not reload the remediation runs."); });
  }
  function reloadEvents() {
    fetch("/v1/events?limit=" + MAX_EVENTS, { cache: "no-store" })
      .then(function (r) { return r.json(); })
      .then(function (b) {
        var body = document.getElementById("events-body");
        body.replaceChildren.apply(body, b.events.slice().reverse().map(eventRow));
      })
      .catch(function () { announce("Could not reload the events."); });
  }

  function points(key, now) {
    var start = now - boot.span, shown = history[key].filter(function (p) { return p[0] >= start; });
    var top = 100;
    if (boot.series[key] !== "%") {
      top = Math.max(1, Math.max.apply(null, [0].concat(shown.map(function (p) { return p[1]; }))) * 1.1);
    }
    return shown.map(function (p) {
      var x = (p[0] - start) / boot.span * W;
      var y = H - Math.min(Math.max(p[1], 0), top) / top * H;
      return x.toFixed(1) + "," + y.toFixed(1);
    }).join(" ");
  }
  function addSample(s) {
    Object.keys(history).forEach(function (key) {
      if (key in s.values) {
        history[key].push([s.time, s.values[key]]);
        if (history[key].length > 360) { history[key].shift(); }
        var v = s.values[key];
        setText("latest-" + key, Number(v.toPrecision(4)) + boot.series[key]);
      }
      document.getElementById("line-" + key).setAttribute("points", points(key, s.time));
    });
  }

  function connect() {
    if (!boot.stream || !window.EventSource) { setText("id-stream", "off (reload to update)"); return; }
    var source = new EventSource("/v1/stream");
    function on(name, handler) {
      source.addEventListener(name, function (msg) {
        try { handler(JSON.parse(msg.data)); } catch (err) { announce("Bad update: " + err); }
      });
    }
    source.onopen = function () {
      setText("id-stream", "\u2714 connected");
      // Catch up on events recorded since the page was rendered (a new EventSource cannot
      // say where it left off; only the browser's own reconnects resume from the last id).
      reloadEvents();
    };
    source.onerror = function () {
      setText("id-stream", "\u2716 disconnected, retrying\u2026");
      // The browser retries by itself unless the server refused (say, 503: too many streams).
      if (source.readyState === EventSource.CLOSED) { setTimeout(connect, 5000); }
    };
    on("snapshot", applySnapshot);
    on("event", addEvent);
    on("sample", addSample);
    on("resync", function (s) {
      applySnapshot(s);
      reloadEvents();
      announce("Updates were dropped while this page was slow; it has been refreshed.");
    });
  }

  function pauseControls() {
    var form = document.getElementById("pause-form");
    if (!form) { return; }
    var token = document.getElementById("token");
    var remember = document.getElementById("remember");
    var result = document.getElementById("pause-result");
    var kept = window.sessionStorage.getItem("nodemedic-token");
    if (kept) { token.value = kept; remember.checked = true; }
    function send(method, doing) {
      if (remember.checked) { window.sessionStorage.setItem("nodemedic-token", token.value); }
      else { window.sessionStorage.removeItem("nodemedic-token"); }
      var headers = {};
      if (token.value) { headers.Authorization = "Bearer " + token.value; }
      result.className = "";
      result.textContent = doing + "\u2026";
      fetch("/v1/pause", { method: method, headers: headers, cache: "no-store" })
        .then(function (r) {
          return r.json().catch(function () { return {}; }).then(function (b) { return [r, b]; });
        })
        .then(function (rb) {
          var r = rb[0], b = rb[1];
          if (r.ok) {
            result.className = "ok";
            result.textContent = "\u2714 " + (b.detail || doing + " done");
            return fetch("/v1/remediation", { cache: "no-store" }).then(function (s) { return s.json(); })
              .then(function (s) {
                setText("id-remediation", s.paused ? "Paused" + (s.reason ? ": " + s.reason : "") : "Active (not paused)");
              });
          }
          result.className = "error";
          result.textContent = "\u2716 Refused (HTTP " + r.status + "): " +
            (b.error || b.reason || r.statusText) + (b.detail ? ": " + b.detail : "");
        })
        .catch(function (err) { result.className = "error"; result.textContent = "\u2716 " + err; });
    }
    document.getElementById("pause").addEventListener("click", function () { send("POST", "Pausing"); });
    document.getElementById("resume").addEventListener("click", function () { send("DELETE", "Resuming"); });
    form.addEventListener("submit", function (ev) { ev.preventDefault(); });
  }

  pauseControls();
  connect();
})();
