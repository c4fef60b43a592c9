"use strict";
(function () {
  const stages = ["placed", "accepted", "preparing", "ready", "notified"];
  const orders = new Map();
  const rows = document.getElementById("orders");
  const panel = document.getElementById("fn-panel");
  let via = "broker";

  // With -token, the routes that write or act need the ingress token: on a
  // 401 the page asks for it once and keeps it for this tab.
  async function authFetch(url, opts) {
    const send = function () {
      const headers = Object.assign({}, opts.headers || {});
      const token = sessionStorage.getItem("koffeeshop-token");
      if (token) headers["Authorization"] = "Bearer " + token;
      return fetch(url, Object.assign({}, opts, { headers: headers }));
    };
    let resp = await send();
    if (resp.status === 401) {
      const token = window.prompt("This shop needs its ingress token (-token):");
      if (token) {
        sessionStorage.setItem("koffeeshop-token", token.trim());
        resp = await send();
      }
    }
    return resp;
  }

  // The form offers the shop's menu, as take-order reads it.
  fetch("/_board/menu").then(function (r) { return r.json(); }).then(function (m) {
    const sel = document.getElementById("beverage");
    m.menu.forEach(function (b) {
      const o = el("option", "", b);
      o.value = b;
      if (b === "latte") o.selected = true;
      sel.append(o);
    });
    document.getElementById("customer").maxLength = m.maxCustomerLength;
  });

  document.querySelectorAll("#order-form button").forEach(function (b) {
    b.addEventListener("click", function () { via = b.value; });
  });

  document.getElementById("order-form").addEventListener("submit", async function (ev) {
    ev.preventDefault();
    const out = document.getElementById("last-result");
    const body = { customer: document.getElementById("customer").value, beverage: document.getElementById("beverage").value, via: via };
    out.textContent = "Sending…";
    try {
      const resp = await authFetch("/_board/orders", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      if (resp.status === 401) {
        out.textContent = "Failed (401): this shop needs its ingress token";
        return;
      }
      const r = await resp.json();
      if (r.error) {
        out.textContent = "Failed (" + r.status + "): " + r.error;
      } else if (r.via === "direct") {
        out.textContent = "take-order answered " + r.status + " with " + (r.reply || "no event").replace("com.koffeeshop.", "") + " in " + r.millis.toFixed(1) + " ms (synchronous)";
      } else {
        out.textContent = "Broker answered " + r.status + " in " + r.millis.toFixed(1) + " ms: the order is stored, the shop takes it from here";
      }
      out.dataset.via = r.via;
      out.dataset.status = r.status;
    } catch (e) {
      out.textContent = "Failed: " + e;
    }
  });

  document.getElementById("kill-barista").addEventListener("click", async function () {
    const out = document.getElementById("kill-result");
    const resp = await authFetch("/_board/kill?service=prepare-beverage", { method: "POST" });
    out.textContent = resp.ok ? "Killed " + (await resp.json()).killed + ": its orders will be redelivered" : "Nothing to kill: " + (await resp.text());
  });

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function renderOrder(o) {
    let tr = orders.get(o.orderId);
    if (!tr) {
      tr = el("tr");
      tr.dataset.orderId = o.orderId;
      orders.set(o.orderId, tr);
      rows.prepend(tr);
    }
    tr.dataset.customer = o.customer || "";
    tr.dataset.stage = o.stage;
    tr.replaceChildren();
    tr.append(el("td", "", o.customer || "…"), el("td", "", o.beverage || "…"));
    const steps = el("td");
    const wrap = el("div", "steps");
    if (o.stage === "rejected" || o.stage === "failed") {
      // Both end the order: rejected by take-order's rules, failed when
      // one of its events could not be delivered (it was dead-lettered).
      tr.dataset.reason = o.reason || "";
      wrap.append(el("span", "step done", "placed"), el("span", "step " + o.stage, o.stage + ": " + (o.reason || "")));
    } else {
      const at = stages.indexOf(o.stage);
      stages.forEach(function (s, i) {
        wrap.append(el("span", "step" + (i < at ? " done" : i === at ? (s === "notified" ? " done" : " now") : ""), s));
      });
    }
    steps.append(wrap);
    tr.append(steps, el("td", "", o.barista || ""));
    const tl = el("td");
    if (o.traceId) {
      tr.dataset.traceId = o.traceId;
      const b = el("button", "secondary show-trace", "Timeline");
      b.type = "button";
      b.addEventListener("click", function () { showTimeline(o); });
      tl.append(b);
    }
    tr.append(tl);
    if (shown && shown.orderId === o.orderId) {
      shown = o;
      scheduleTimeline();
    }
  }

  // The timeline of one order: every span of its trace on one time axis,
  // so the time queued in JetStream shows apart from the time in each
  // function, with retries, cold starts and dead letters marked.
  let shown = null;
  let polls = 0;
  let timer = null;
  function showTimeline(o) {
    shown = o;
    document.getElementById("timeline").hidden = false;
    document.getElementById("timeline-title").textContent = (o.customer || "") + " · " + (o.beverage || "") + " · trace " + o.traceId;
    scheduleTimeline();
  }

  // The functions' spans arrive a moment after they end: the timeline is
  // fetched again each second for ten seconds after the order last moved.
  function scheduleTimeline() {
    polls = 0;
    if (!timer) loadTimeline();
  }

  async function loadTimeline() {
    timer = null;
    if (!shown) return;
    try {
      const resp = await fetch("/_board/traces/" + shown.traceId);
      if (resp.ok) renderTimeline(await resp.json());
    } catch (e) { /* the runner is restarting */ }
    if (polls++ < 10) timer = setTimeout(loadTimeline, 1000);
  }

  function kindOf(s) {
    const a = s.attrs || {};
    if (s.name.indexOf("queued in ") === 0) return "queued";
    if (s.name === "waiting for an instance") return "coldstart";
    if (s.name.indexOf("ingress ") === 0 || s.name.indexOf("board order ") === 0) return "ingress";
    if (s.name.indexOf("dead-letter ") === 0) return "failed";
    if (s.name.indexOf("deliver to ") === 0) return s.error || a["koffeeshop.outcome"] === "retry" ? "failed" : "deliver";
    return s.error ? "failed" : "function";
  }

  function renderTimeline(spans) {
    const box = document.getElementById("waterfall");
    box.replaceChildren();
    if (!spans.length) return;
    // Milliseconds with the microseconds the spans carry (Date.parse
    // stops at milliseconds).
    const t = function (x) {
      const frac = x.match(/\.(\d+)/);
      return Date.parse(x.replace(/\.\d+/, "")) + (frac ? parseFloat("0." + frac[1]) * 1000 : 0);
    };
    const t0 = Math.min.apply(null, spans.map(function (s) { return t(s.start); }));
    const t1 = Math.max.apply(null, spans.map(function (s) { return t(s.end); }));
    const total = Math.max(t1 - t0, 1);
    const sum = { queued: 0, function: 0, coldstart: 0, retries: 0, dead: 0 };
    spans.forEach(function (s) {
      const kind = kindOf(s);
      const ms = t(s.end) - t(s.start);
      const a = s.attrs || {};
      if (kind === "queued") sum.queued += ms;
      if (kind === "function") sum.function += ms;
      if (kind === "coldstart") sum.coldstart += ms;
      if (a["koffeeshop.outcome"] === "retry") sum.retries++;
      if (s.name.indexOf("dead-letter ") === 0) sum.dead++;
      const row = el("div", "span " + kind);
      row.dataset.kind = kind;
      row.dataset.service = s.service;
      let label = s.service + ": " + s.name;
      if (a["koffeeshop.attempt"] && a["koffeeshop.attempt"] !== "1") label += " (attempt " + a["koffeeshop.attempt"] + ")";
      if (a["koffeeshop.outcome"] && a["koffeeshop.outcome"] !== "delivered") label += " → " + a["koffeeshop.outcome"].replace("_", " ");
      const name = el("div", "label", label);
      const lane = el("div", "lane");
      const bar = el("div", "bar");
      bar.style.left = ((t(s.start) - t0) / total * 100).toFixed(2) + "%";
      bar.style.width = Math.max(ms / total * 100, 0.4).toFixed(2) + "%";
      bar.title = ms.toFixed(2) + " ms";
      lane.append(bar);
      row.append(name, lane, el("div", "ms", ms.toFixed(1) + " ms"));
      box.append(row);
    });
    document.getElementById("timeline-summary").textContent =
      "placed → last hop " + total.toFixed(1) + " ms: " + sum.queued.toFixed(1) + " ms queued in JetStream, " +
      sum.function.toFixed(1) + " ms in the functions, " + sum.coldstart.toFixed(1) + " ms waiting for cold starts; " +
      sum.retries + " retr" + (sum.retries === 1 ? "y" : "ies") + ", " + sum.dead + " dead letter" + (sum.dead === 1 ? "" : "s");
  }

  // The scale chart: each function's instances, requests in flight and
  // backlog, one sample a second, from the runner's history.
  const charts = document.getElementById("scale-chart");
  const svgNS = "http://www.w3.org/2000/svg";
  async function loadHistory() {
    try {
      const resp = await fetch("/_board/history");
      if (resp.ok) renderHistory(await resp.json());
    } catch (e) { /* the runner is restarting */ }
    setTimeout(loadHistory, 2000);
  }

  function renderHistory(samples) {
    const names = new Set();
    samples.forEach(function (s) { Object.keys(s.functions || {}).forEach(function (n) { names.add(n); }); });
    Array.from(names).sort().forEach(function (name) {
      let fig = charts.querySelector('[data-service="' + name + '"]');
      if (!fig) {
        fig = el("figure", "chart");
        fig.dataset.service = name;
        const svg = document.createElementNS(svgNS, "svg");
        svg.setAttribute("viewBox", "0 0 300 60");
        svg.setAttribute("preserveAspectRatio", "none");
        ["backlog", "inflight", "instances"].forEach(function (k) {
          const line = document.createElementNS(svgNS, "polyline");
          line.setAttribute("class", k);
          svg.append(line);
        });
        fig.append(svg, el("figcaption", "", name));
        charts.append(fig);
      }
      const vals = samples.map(function (s) { return (s.functions || {})[name] || { instances: 0, inFlight: 0, backlog: 0 }; });
      const top = Math.max(1, Math.max.apply(null, vals.map(function (v) { return Math.max(v.instances, v.inFlight, v.backlog); })));
      const pts = function (key) {
        return vals.map(function (v, i) {
          const x = samples.length < 2 ? 300 : i / (samples.length - 1) * 300;
          return x.toFixed(1) + "," + (58 - v[key] / top * 56).toFixed(1);
        }).join(" ");
      };
      fig.querySelector(".instances").setAttribute("points", pts("instances"));
      fig.querySelector(".inflight").setAttribute("points", pts("inFlight"));
      fig.querySelector(".backlog").setAttribute("points", pts("backlog"));
      fig.dataset.samples = String(samples.length);
      fig.dataset.peakInstances = String(Math.max.apply(null, vals.map(function (v) { return v.instances; })));
      fig.querySelector("figcaption").textContent = name + " · peak " + fig.dataset.peakInstances + " instance" + (fig.dataset.peakInstances === "1" ? "" : "s") + " · scale " + top;
    });
  }
  loadHistory();

  function renderStatus(s) {
    (s.functions || []).forEach(function (f) {
      let box = panel.querySelector('[data-service="' + f.service + '"]');
      if (!box) {
        box = el("div", "fn");
        box.dataset.service = f.service;
        box.append(el("div", "name", f.service), el("div", "count"), el("div", "meta"));
        panel.append(box);
      }
      const live = (f.instances || []).filter(function (i) { return i.state !== "draining"; }).length;
      box.dataset.instances = String(live);
      const count = box.querySelector(".count");
      count.textContent = String(live);
      count.className = "count" + (live === 0 ? " zero" : "");
      box.querySelector(".meta").textContent = (live === 1 ? "instance" : "instances") + " · " + f.inFlight + " in flight · " + f.backlog + " backlog" + (f.maxScale ? " · max " + f.maxScale : "");
    });
  }

  const es = new EventSource("/_board/events");
  es.addEventListener("order", function (e) { renderOrder(JSON.parse(e.data)); });
  es.addEventListener("status", function (e) { renderStatus(JSON.parse(e.data)); });
})();
