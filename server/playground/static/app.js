// repirl playground: vanilla JS, no dependencies. It uses only the public API (GET /v1/models, POST /v1/score,
// /v1/rerank, /v1/search with stream: true), with the key typed into the page: kept in this page's memory only
// (never in storage or cookies), sent as `Authorization: Bearer KEY` on every call.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const PROBABILITY_FORMATS = new Set(["qwen-step-tag", "math-shepherd"]);
  const state = { prms: {}, policy: null, connected: false, search: null, lastScore: {} };
  // What the page received and drew, for tests and debugging (counts only, never the key).
  const probe = (window.__playground = {
    sseEvents: 0, stepEvents: 0, resultEvents: 0, errorEvents: 0, drawnAfterEvent: [], resamplings: 0,
  });

  // ---- small DOM helpers (text goes in as text: steps and model output are never parsed as HTML) --------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("data-")) node.dataset[k.slice(5).replace(/-(\w)/g, (_, c) => c.toUpperCase())] = v;
      else node.setAttribute(k, v);
    }
    for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c);
    return node;
  }
  const SVG = "http://www.w3.org/2000/svg";
  function svgEl(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    return node;
  }
  function fmt(v) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e4)) return v.toExponential(2);
    return v.toFixed(3);
  }

  // ---- errors: the server's own message, as `{"error": {"type", "message", "param"}}` carries it ---------------
  function apiError(status, body, fallback) {
    const err = (body && body.error) || {};
    const e = new Error(err.message || fallback || "request failed");
    e.status = status;
    e.type = err.type || "";
    e.param = err.param || null;
    return e;
  }
  function showError(e) {
    const box = $("error");
    const head = e.status ? `HTTP ${e.status}${e.type ? " " + e.type : ""}: ` : "";
    box.textContent = head + e.message + (e.param ? ` (param: ${e.param})` : "");
    box.dataset.status = e.status || "";
    box.hidden = false;
  }
  function clearError() {
    $("error").hidden = true;
    $("error").textContent = "";
  }

  // ---- the API ------------------------------------------------------------------------------------------------
  function headers() {
    const h = { "Content-Type": "application/json", Accept: "application/json, text/event-stream" };
    const key = $("api-key").value.trim();
    if (key) h.Authorization = "Bearer " + key;
    return h;
  }
  // Relative paths: the page lives at <base>/playground, so "v1/score" is <base>/v1/score (also behind a prefix).
  async function api(path, body, opts = {}) {
    const resp = await fetch(path, {
      method: body === undefined ? "GET" : "POST", headers: headers(), cache: "no-store", signal: opts.signal,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (!resp.ok) {
      let data = null;
      try { data = await resp.json(); } catch (_) { /* not JSON: use the status text */ }
      throw apiError(resp.status, data, `${resp.status} ${resp.statusText}`);
    }
    return opts.raw ? resp : resp.json();
  }

  async function connect(silent) {
    clearError();
    try {
      const list = await api("v1/models");
      state.prms = {};
      state.policy = null;
      for (const m of list.data) {
        if (m.kind === "prm") state.prms[m.id] = m;
        else if (m.kind === "policy") state.policy = m;
      }
      state.connected = true;
      fillModelSelects();
      const n = Object.keys(state.prms).length;
      $("connection").textContent = `connected: ${n} PRM${n === 1 ? "" : "s"}` +
        (state.policy ? " + a policy" : " (no policy: search is off)");
      $("connection").dataset.state = "connected";
      return true;
    } catch (e) {
      state.connected = false;
      $("connection").dataset.state = "error";
      if (silent && e.status === 401) {
        $("connection").textContent = "this server needs an API key";
        return false;
      }
      $("connection").textContent = "not connected";
      showError(e);
      return false;
    }
  }
  async function ensureConnected() {
    return state.connected || connect(false);
  }

  function fillModelSelects() {
    const ids = Object.keys(state.prms);
    for (const sel of document.querySelectorAll("select.prm-select")) {
      const before = sel.value;
      sel.replaceChildren();
      if (sel.dataset.optional) sel.append(el("option", { value: "", text: "(none)" }));
      for (const id of ids) sel.append(el("option", { value: id, text: `${id} (${state.prms[id].format})` }));
      if (ids.includes(before) || (sel.dataset.optional && before === "" && sel.dataset.touched)) sel.value = before;
      else if (sel.dataset.optional) sel.value = ids[1] || "";
      else sel.value = ids[0] || "";
    }
  }

  function splitSteps(text, perLine) {
    return (perLine ? text.split(/\r?\n/) : text.split(/\r?\n[ \t]*\r?\n/)).map((s) => s.trim()).filter(Boolean);
  }

  // ---- colours --------------------------------------------------------------------------------------------------
  // Score view: relative to the panel's threshold. Below it: red to orange (hue 0-48); at or above: yellow-green to
  // green (hue 72-120); how far along is the distance from the threshold over the largest such distance.
  function thresholdColour(v, thr, scale) {
    const d = scale > 0 ? Math.min(1, Math.abs(v - thr) / scale) : 0;
    return v < thr ? `hsl(${Math.round(48 - 48 * d)}, 75%, 82%)` : `hsl(${Math.round(72 + 48 * d)}, 55%, 80%)`;
  }
  // Rerank and search: relative to the lowest and highest value shown (red = lowest, green = highest).
  function rangeColour(v, lo, hi) {
    if (v === null || v === undefined) return "#eef1f5";
    const t = hi > lo ? (v - lo) / (hi - lo) : 0.5;
    return `hsl(${Math.round(120 * t)}, 60%, 80%)`;
  }
  function perStep(list, k) {
    return Array.isArray(list) && list.length > k ? list[k] : null;
  }

  // ---- Score ----------------------------------------------------------------------------------------------------
  async function runScore() {
    clearError();
    if (!(await ensureConnected())) return;
    const question = $("score-question").value.trim();
    const steps = splitSteps($("score-solution").value, $("score-lines").checked);
    if (!steps.length) return showError(new Error("the solution has no steps"));
    const aggregation = $("score-aggregation").value;
    const button = $("score-run");
    button.disabled = true;
    try {
      await Promise.all(["a", "b"].map(async (side) => {
        const model = $("score-model-" + side).value;
        if (!model) {
          delete state.lastScore[side];
          $("score-out-" + side).replaceChildren(el("p", { class: "muted", text: "Pick a second PRM to compare." }));
          return;
        }
        const body = { question, steps, model };
        if (aggregation) body.aggregation = aggregation;
        const resp = await api("v1/score", body);
        state.lastScore[side] = { resp, steps, model };
        renderScore(side);
      }));
    } catch (e) {
      showError(e);
    } finally {
      button.disabled = false;
    }
  }

  function renderScore(side) {
    const last = state.lastScore[side];
    if (!last) return;
    const { resp, steps, model } = last;
    const item = resp.data[0];
    const card = state.prms[model] || {};
    const p = Array.isArray(item.p_correct) && item.p_correct.length === steps.length ? item.p_correct : null;
    const values = p || item.step_rewards;
    const probability = Boolean(p) || PROBABILITY_FORMATS.has(card.format);
    const thrInput = $("score-threshold-" + side);
    // until the user types one: 0.5 for probabilities; for raw rewards (no fixed scale) this solution's mean
    if (thrInput.dataset.auto !== "0") {
      const mean = values.reduce((a, v) => a + v, 0) / values.length;
      thrInput.value = probability ? "0.5" : String(+mean.toPrecision(4));
    }
    const thr = Number.isFinite(parseFloat(thrInput.value)) ? parseFloat(thrInput.value) : 0;
    const scale = probability ? Math.max(thr, 1 - thr) : Math.max(0, ...values.map((v) => Math.abs(v - thr)));
    const flagged = values.findIndex((v) => v < thr);
    const out = $("score-out-" + side);
    const summary = el("p", { class: "summary" },
      el("b", { text: model }), ` · ${card.format || "?"} · ${resp.aggregation}: `,
      el("b", { class: "score", "data-score": String(item.score), "data-aggregation": resp.aggregation,
        text: fmt(item.score) }),
      " · ", flagged >= 0 ? el("span", { class: "flag", text: `step ${flagged + 1} is the first below ${+thr.toPrecision(4)}` })
        : el("span", { class: "muted", text: `no step below ${+thr.toPrecision(4)}` }),
      p ? null : el("span", { class: "muted", text: probability ? "" : " · raw reward (no p_correct)" }));
    const list = el("ol", { class: "steps" });
    steps.forEach((text, i) => {
      const below = values[i] < thr;
      const li = el("li", {
        class: "step" + (i === flagged ? " flagged" : ""), "data-index": String(i),
        "data-reward": String(item.step_rewards[i]), "data-value": String(values[i]),
        "data-kind": p ? "p_correct" : "reward", "data-below": String(below),
        title: `reward ${item.step_rewards[i]}` + (p ? `, p_correct ${p[i]}` : ""),
      },
      el("span", { class: "idx", text: String(i + 1) }),
      el("span", { class: "text", text }),
      el("span", { class: "val", text: p ? `p ${fmt(p[i])} · r ${fmt(item.step_rewards[i])}` : `r ${fmt(item.step_rewards[i])}` }),
      i === flagged ? el("span", { class: "flag", text: "\u2691 first step below the threshold" }) : null);
      li.style.backgroundColor = thresholdColour(values[i], thr, scale);
      list.append(li);
    });
    out.replaceChildren(summary, list);
  }

  // ---- Rerank ---------------------------------------------------------------------------------------------------
  async function runRerank() {
    clearError();
    if (!(await ensureConnected())) return;
    const question = $("rerank-question").value.trim();
    const candidates = $("rerank-candidates").value.split(/^[ \t]*-{3,}[ \t]*$/m)
      .map((block) => splitSteps(block, false)).filter((s) => s.length);
    if (!candidates.length) return showError(new Error("no candidates"));
    const body = { question, candidates: candidates.map((steps) => ({ steps })), model: $("rerank-model").value,
      voting: $("rerank-voting").value };
    if ($("rerank-aggregation").value) body.aggregation = $("rerank-aggregation").value;
    $("rerank-run").disabled = true;
    try {
      renderRerank(await api("v1/rerank", body), candidates);
    } catch (e) {
      showError(e);
    } finally {
      $("rerank-run").disabled = false;
    }
  }

  function renderRerank(resp, candidates) {
    const all = resp.results.flatMap((r) => r.step_rewards);
    const lo = Math.min(...all), hi = Math.max(...all);
    const chosen = resp.selected.index;
    const table = el("table", { id: "rerank-table" },
      el("thead", {}, el("tr", {}, ...["rank", "candidate", "answer", `score (${resp.aggregation})`, "step rewards"]
        .map((h) => el("th", { text: h })))));
    const tbody = el("tbody");
    resp.results.forEach((r, rank) => {
      const chips = el("div", { class: "chips" }, r.step_rewards.map((v, k) => {
        const chip = el("span", { class: "chip", text: fmt(v), title: candidates[r.index][k] || "" });
        chip.style.backgroundColor = rangeColour(v, lo, hi);
        return chip;
      }));
      tbody.append(el("tr", {
        class: "rank-row" + (r.index === chosen ? " chosen" : ""), "data-index": String(r.index),
        "data-rank": String(rank + 1), "data-score": String(r.score), "data-answer": r.answer ?? "",
      },
      el("td", { class: "num", text: String(rank + 1) }),
      el("td", { text: `#${r.index + 1}` + (r.index === chosen ? "  \u2605 chosen" : "") }),
      el("td", { text: r.answer ?? "(none)" }),
      el("td", { class: "num", text: fmt(r.score) }),
      el("td", {}, chips)));
    });
    table.append(tbody);

    const entries = Object.entries(resp.selected.votes || {}).sort((a, b) => b[1] - a[1]);
    const top = Math.max(0, ...entries.map(([, v]) => v));
    const winner = resp.selected.answer;
    const votes = el("div", { class: "votes", id: "rerank-votes" },
      entries.length ? el("b", { text: `votes per answer (${resp.voting})` }) : null,
      entries.map(([answer, v]) => {
        const bar = el("div", { class: "bar" });
        bar.style.width = `${top > 0 ? (100 * v) / top : 0}%`;
        return el("div", { class: "vote" + (answer === winner ? " winner" : ""), "data-answer": answer,
          "data-votes": String(v) }, el("span", { text: answer }), el("div", {}, bar), el("span", { class: "num", text: fmt(v) }));
      }));
    const box = el("div", { class: "chosen-box", id: "rerank-chosen", "data-index": chosen === null ? "" : String(chosen) },
      chosen === null ? el("span", { text: "No candidate states an answer: nothing chosen." }) : [
        el("b", { text: `Chosen: candidate #${chosen + 1}` }),
        ` · answer ${resp.selected.answer ?? "(none)"} · score ${fmt(resp.selected.score)}`,
        el("pre", { text: candidates[chosen].join("\n\n") })]);
    $("rerank-out").replaceChildren(
      el("p", { class: "summary" }, el("b", { text: resp.model }), ` · ranking ${resp.ranking.map((i) => "#" + (i + 1)).join(" > ")}`),
      table, votes, box);
  }

  // ---- Search: a tree that grows with the SSE events ------------------------------------------------------------
  let tree = null;
  function newTree(question) {
    tree = { nodes: new Map(), question, result: null };
    tree.nodes.set(0, { id: 0, parent: null, steps: [], children: [], root: true, state: "root" });
  }
  function upsert(c, kind) {
    let node = tree.nodes.get(c.id);
    if (!node) {
      const parent = tree.nodes.get(c.parent ?? 0) || tree.nodes.get(0);
      node = { id: c.id, parent: parent.id, children: [] };
      tree.nodes.set(c.id, node);
      parent.children.push(c.id);
    }
    const k = c.steps.length;
    Object.assign(node, { steps: c.steps, finished: c.finished, truncated: c.truncated, answer: c.answer,
      score: c.score, state: kind });
    const r = perStep(c.step_rewards, k - 1);
    if (r !== null) node.reward = r;
    const p = perStep(c.p_correct, k - 1);
    if (p !== null) node.p = p;
  }
  function onSearchEvent(event, data) {
    probe.sseEvents++;
    if (event === "step" && data.weights) {  // particle strategies: the n particles, their weights, resampling
      probe.stepEvents++;
      particleStep(data);
      drawTree();
      probe.drawnAfterEvent.push(drawnNodes());
    } else if (event === "step") {
      probe.stepEvents++;
      for (const c of data.beams || []) upsert(c, "kept");
      for (const c of data.pruned || []) upsert(c, "pruned");
      for (const c of data.completed || []) upsert(c, "completed");
      drawTree();
      probe.drawnAfterEvent.push(drawnNodes());
    } else if (event === "result") {
      probe.resultEvents++;
      applyResult(data);
      drawTree();
      setStatus("done", `done: answer ${data.answer ?? "(none)"}`);
    } else if (event === "error") {
      probe.errorEvents++;
      showError(apiError(data.error && data.error.type === "unauthorized" ? 401 : 0, data));
      setStatus("error", "error");
    }
    updateCounters();
  }
  // A particle's node carries its summed weight and, when the step resampled, how many copies it got: a particle
  // without copies is drawn as pruned, references of particle Gibbs (the beams after the resampled ones) as kept.
  function particleStep(data) {
    const weight = new Map(), copies = new Map();
    data.beams.forEach((c, i) => weight.set(c.id, (weight.get(c.id) || 0) + data.weights[i]));
    const free = data.ancestors ? data.ancestors.length : data.beams.length;
    for (const a of data.ancestors || []) copies.set(data.beams[a].id, (copies.get(data.beams[a].id) || 0) + 1);
    data.beams.forEach((c, i) => {
      const dropped = data.ancestors && i < free && !copies.has(c.id) && !c.finished;
      upsert(c, c.finished ? "completed" : dropped ? "pruned" : "kept");
      const n = tree.nodes.get(c.id);
      n.weight = weight.get(c.id);
      n.copies = data.ancestors ? copies.get(c.id) || 0 : undefined;
    });
    if (data.ancestors) probe.resamplings++;
  }
  function applyResult(r) {
    tree.result = r;
    // best-of-n scores only complete samples: give every step on their paths its reward
    for (const c of r.candidates || []) {
      const leaf = tree.nodes.get(c.id);
      if (!leaf) continue;
      Object.assign(leaf, { score: c.score, answer: c.answer, finished: true, truncated: c.truncated,
        state: "completed" });
      for (let n = leaf; n && !n.root; n = tree.nodes.get(n.parent)) {
        const k = n.steps.length;
        if (n.reward === undefined && perStep(c.step_rewards, k - 1) !== null) n.reward = c.step_rewards[k - 1];
        if (n.p === undefined && perStep(c.p_correct, k - 1) !== null) n.p = c.p_correct[k - 1];
      }
    }
    const same = (s) => s.length === r.steps.length && s.every((x, i) => x === r.steps[i]);
    const pool = (r.candidates || []).map((c) => tree.nodes.get(c.id)).filter(Boolean);
    const done = [...tree.nodes.values()].filter((n) => !n.root && n.state === "completed");
    const pick = pool.find((n) => same(n.steps) && n.score === r.score) || pool.find((n) => same(n.steps)) ||
      done.find((n) => same(n.steps));
    if (pick) {
      pick.pick = true;
      for (let n = pick; n; n = tree.nodes.get(n.parent)) n.onPath = true;
    }
    const stats = r.stats || {};
    $("search-result").replaceChildren(
      el("p", { class: "summary" }, el("b", { text: `answer ${r.answer ?? "(none)"}` }),
        ` · score ${fmt(r.score)} · ${r.strategy}, select ${r.select}, ${r.aggregation} · ` +
        `${stats.steps} steps, ${stats.candidates} candidates, ${stats.policy_calls} policy calls, ` +
        `PRM tokens computed ${stats.prm_tokens_computed} of ${stats.prm_tokens_total}, ` +
        `${(stats.wall_time_s || 0).toFixed(2)} s`),
      el("pre", { id: "search-pick", text: r.text }));
  }

  const COL = 176, ROW = 36, NODE_W = 158, NODE_H = 30, PAD = 14;
  function drawnNodes() {
    return $("search-tree").querySelectorAll("g.node:not(.root)").length;
  }
  function nodeLabel(n) {
    if (n.root) return tree.question || "question";
    const parent = tree.nodes.get(n.parent);
    if (parent && n.steps.length <= parent.steps.length) return "(end)";
    return n.steps[n.steps.length - 1] || "";
  }
  function drawTree() {
    const svg = $("search-tree");
    const nodes = tree.nodes;
    let leaves = 0, maxDepth = 0;
    const pos = new Map();
    const place = (id, depth) => {
      const n = nodes.get(id);
      maxDepth = Math.max(maxDepth, depth);
      const kids = [...n.children].sort((a, b) => a - b);
      let y;
      if (!kids.length) y = leaves++;
      else {
        const ys = kids.map((k) => place(k, depth + 1));
        y = (ys[0] + ys[ys.length - 1]) / 2;
      }
      pos.set(id, { x: PAD + depth * COL, y: PAD + y * ROW });
      return y;
    };
    place(0, 0);
    const rewards = [...nodes.values()].map((n) => (n.p !== undefined ? n.p : n.reward)).filter((v) => v !== undefined);
    const lo = Math.min(...rewards), hi = Math.max(...rewards);
    svg.replaceChildren();
    svg.setAttribute("width", String(PAD * 2 + maxDepth * COL + NODE_W));
    svg.setAttribute("height", String(PAD * 2 + Math.max(1, leaves) * ROW));
    const edges = svgEl("g", { class: "edges" });
    const boxes = svgEl("g", { class: "nodes" });
    for (const n of nodes.values()) {
      const { x, y } = pos.get(n.id);
      if (!n.root) {
        const p = pos.get(n.parent);
        const x0 = p.x + NODE_W, y0 = p.y + NODE_H / 2, y1 = y + NODE_H / 2, mid = (x0 + x) / 2;
        edges.append(svgEl("path", { class: `edge ${n.state}${n.onPath ? " on-path" : ""}`,
          d: `M${x0},${y0} C${mid},${y0} ${mid},${y1} ${x},${y1}` }));
      }
      const value = n.p !== undefined ? n.p : n.reward;
      const g = svgEl("g", { class: `node ${n.state}${n.pick ? " pick" : ""}${n.root ? " root" : ""}`,
        transform: `translate(${x},${y})`, "data-id": String(n.id), "data-state": n.state });
      if (n.reward !== undefined) g.setAttribute("data-reward", String(n.reward));
      if (n.pick) g.setAttribute("data-pick", "true");
      const title = svgEl("title");
      title.textContent = n.root ? tree.question : `#${n.id} (${n.state})\n${n.steps.join("\n")}` +
        (n.reward !== undefined ? `\nstep reward ${n.reward}` : "") + (n.p !== undefined ? `\np_correct ${n.p}` : "") +
        (n.score !== null && n.score !== undefined ? `\nscore ${n.score}` : "") + (n.answer ? `\nanswer ${n.answer}` : "");
      g.append(title);
      g.append(svgEl("rect", { width: NODE_W, height: NODE_H, rx: 4, fill: n.root ? "#e9edf5" : rangeColour(value, lo, hi) }));
      const label = nodeLabel(n);
      const t1 = svgEl("text", { x: 6, y: 12 });
      t1.textContent = label.length > 20 ? label.slice(0, 19) + "\u2026" : label;
      const t2 = svgEl("text", { x: 6, y: 25, class: "r" });
      t2.textContent = n.root ? "" : (value !== undefined ? `${n.p !== undefined ? "p" : "r"} ${fmt(value)}` : "r …") +
        (n.state === "completed" && n.answer ? `  \u2192 ${n.answer}` : "") + (n.pick ? "  \u2605" : "") +
        (n.weight !== undefined ? ` w${fmt(n.weight)}` : "") + (n.copies > 1 ? ` \u00d7${n.copies}` : "");
      if (n.weight !== undefined) g.setAttribute("data-weight", String(n.weight));
      if (n.copies !== undefined) g.setAttribute("data-copies", String(n.copies));
      g.append(t1, t2);
      boxes.append(g);
    }
    svg.append(edges, boxes);
  }
  function updateCounters() {
    if (!tree) return;
    const all = [...tree.nodes.values()].filter((n) => !n.root);
    const pruned = all.filter((n) => n.state === "pruned").length;
    const counters = $("search-counters");
    counters.textContent = `${probe.stepEvents} step events · ${drawnNodes()} nodes drawn (${pruned} pruned)`;
    Object.assign(counters.dataset, { stepEvents: probe.stepEvents, resultEvents: probe.resultEvents, nodes: drawnNodes() });
  }
  function setStatus(kind, text) {
    $("search-status").dataset.state = kind;
    $("search-status").textContent = text || kind;
  }

  async function readEvents(resp, onEvent) {
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.search(/\r?\n\r?\n/)) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut).replace(/^\r?\n\r?\n/, "");
        let event = "message";
        const data = [];
        for (const line of block.split(/\r?\n/)) {
          if (!line || line.startsWith(":")) continue;
          const at = line.indexOf(":");
          const field = at < 0 ? line : line.slice(0, at);
          let v = at < 0 ? "" : line.slice(at + 1);
          if (v.startsWith(" ")) v = v.slice(1);
          if (field === "event") event = v;
          else if (field === "data") data.push(v);
        }
        if (data.length) onEvent(event, JSON.parse(data.join("\n")));
      }
    }
  }

  async function runSearch() {
    clearError();
    if (!(await ensureConnected())) return;
    if (!state.policy) return showError(new Error("this server has no policy loaded (start it with --policy DIR)"));
    const num = (id) => Number($(id).value);
    const body = {
      question: $("search-question").value.trim(), strategy: $("search-strategy").value, n: num("search-n"),
      max_steps: num("search-max-steps"), temperature: num("search-temperature"), select: $("search-select").value,
      model: $("search-model").value, stream: true,
    };
    if (body.strategy === "beam" || body.strategy === "dvts") body.beam_width = num("search-beam-width");
    if (body.strategy === "adaptive-best-of-n" && body.select === "naive") delete body.select;  // it needs a vote
    if (body.strategy.startsWith("particle-")) {
      body.ess_threshold = num("search-ess");
      body.particle_temperature = num("search-ptemp");
    }
    if (body.strategy === "particle-gibbs") body.sweeps = 2;
    if ($("search-seed").value !== "") body.seed = num("search-seed");
    newTree(body.question);
    Object.assign(probe, { sseEvents: 0, stepEvents: 0, resultEvents: 0, errorEvents: 0, drawnAfterEvent: [],
      resamplings: 0 });
    $("search-result").replaceChildren();
    drawTree();
    updateCounters();
    const controller = new AbortController();
    state.search = controller;
    setStatus("running", "running…");
    $("search-run").disabled = true;
    $("search-stop").disabled = false;
    try {
      const resp = await api("v1/search", body, { signal: controller.signal, raw: true });
      await readEvents(resp, onSearchEvent);
      if ($("search-status").dataset.state === "running") setStatus("error", "the stream ended without a result");
    } catch (e) {
      if (e.name === "AbortError") setStatus("stopped", "stopped: the request was cancelled");
      else {
        showError(e);
        setStatus("error", "error");
      }
    } finally {
      state.search = null;
      $("search-run").disabled = false;
      $("search-stop").disabled = true;
      updateCounters();
    }
  }
  function stopSearch() {
    if (state.search) state.search.abort(); // closes the connection: the server cancels the search after its step
  }

  // ---- wiring ---------------------------------------------------------------------------------------------------
  function showView(name) {
    for (const tab of document.querySelectorAll("#tabs button")) tab.setAttribute("aria-selected", String(tab.dataset.view === name));
    for (const view of document.querySelectorAll(".view")) view.hidden = view.id !== "view-" + name;
  }
  document.addEventListener("DOMContentLoaded", () => {
    $("key-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      connect(false);
    });
    $("api-key").addEventListener("input", () => { state.connected = false; });
    for (const tab of document.querySelectorAll("#tabs button")) tab.addEventListener("click", () => showView(tab.dataset.view));
    $("score-run").addEventListener("click", runScore);
    $("score-aggregation").addEventListener("change", () => { if (Object.keys(state.lastScore).length) runScore(); });
    for (const side of ["a", "b"]) {
      const thr = $("score-threshold-" + side);
      thr.dataset.auto = "1";
      thr.addEventListener("input", () => { thr.dataset.auto = "0"; renderScore(side); });
      $("score-model-" + side).addEventListener("change", (ev) => {
        ev.target.dataset.touched = "1";
        thr.dataset.auto = "1";
      });
    }
    $("rerank-run").addEventListener("click", runRerank);
    $("search-run").addEventListener("click", runSearch);
    $("search-stop").addEventListener("click", stopSearch);
    connect(true); // works at once on a server without keys; with keys it asks for one
  });
})();
