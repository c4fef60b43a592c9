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
  }

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
