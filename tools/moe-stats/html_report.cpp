#include "tools/moe-stats/html_report.hpp"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "tools/common/verdict_json.hpp"

namespace moe::stats {
namespace {

// The curves drawn for each layer, when the report has them.
const char* const kCurves[] = {"balancedness", "load_cv",           "max_frac",
                               "gini",         "rank_balancedness", "overload_factor"};

// Text for HTML: the five characters that could end an element or an attribute.
std::string escape_html(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

// JSON inside <script>: no '<' may open "</script>" or a comment, whatever a layer's name
// holds; U+2028/U+2029 are escaped by nlohmann's ASCII output.
std::string script_json(const nlohmann::json& value) {
  const std::string text =
      value.dump(-1, ' ', /*ensure_ascii=*/true, nlohmann::json::error_handler_t::replace);
  std::string out;
  for (char c : text) {
    if (c == '<') {
      out += "\\u003c";
    } else if (c == '>') {
      out += "\\u003e";
    } else if (c == '&') {
      out += "\\u0026";
    } else {
      out += c;
    }
  }
  return out;
}

// Cells of `parts` consecutive items summed: item i goes to cell i * cells / items.
std::vector<double> binned(const std::vector<int64_t>& values, size_t cells) {
  const size_t n = values.size(), m = std::min(cells, n);
  std::vector<double> out(m, 0.0);
  for (size_t i = 0; i < n; ++i) out[i * m / n] += static_cast<double>(values[i]);
  return out;
}

// One layer's heat map: [column][row] of each expert bin's share of the column's load
// times the number of bins (1: an even share), rounded to 3 decimals.
nlohmann::json heat_map(const LayerReport& l) {
  const size_t windows = l.steps.size(), columns = std::min(kHeatColumns, windows);
  nlohmann::json out = nlohmann::json::array();
  for (size_t c = 0; c < columns; ++c) {
    std::vector<int64_t> counts(l.summed_counts.size(), 0);
    for (size_t w = c * windows / columns; w < (c + 1) * windows / columns; ++w)
      for (size_t e = 0; e < counts.size(); ++e) counts[e] += l.steps[w].counts[e];
    const std::vector<double> bins = binned(counts, kHeatRows);
    double total = 0;
    for (double b : bins) total += b;
    nlohmann::json column = nlohmann::json::array();
    for (double b : bins)  // null: no load at all in the column (drawn grey)
      column.push_back(
          total > 0 ? nlohmann::json(
                          std::round(b / total * static_cast<double>(bins.size()) * 1000) / 1000)
                    : nlohmann::json());
    out.push_back(column);
  }
  return out;
}

// Each layer's summed load over its expert bins, relative to an even share; past
// kHeatRows layers, neighbouring layers are averaged into one row, named after its
// first. {"labels": [...], "rows": [[...]]}, null where a row has no load.
nlohmann::json layer_map(const std::vector<LayerReport>& report) {
  const size_t n = report.size(), rows = std::min(kHeatRows, n);
  std::vector<std::vector<double>> sum(rows);
  std::vector<std::vector<int>> count(rows);
  nlohmann::json labels = nlohmann::json::array();
  for (size_t i = 0; i < n; ++i) {
    const size_t row = i * rows / n;
    const LayerReport& l = report[i];
    if (labels.size() == row)
      labels.push_back(l.layer + (l.split.empty() ? "" : " (" + l.split + ")") +
                       ((i + 1) * rows / n == row ? " ..." : ""));
    const std::vector<double> bins = binned(l.summed_counts, kHeatRows);
    double total = 0;
    for (double b : bins) total += b;
    if (total <= 0) continue;
    if (sum[row].size() < bins.size()) {
      sum[row].resize(bins.size(), 0.0);
      count[row].resize(bins.size(), 0);
    }
    for (size_t e = 0; e < bins.size(); ++e) {
      sum[row][e] += bins[e] / total * static_cast<double>(bins.size());
      ++count[row][e];
    }
  }
  nlohmann::json out_rows = nlohmann::json::array();
  for (size_t r = 0; r < rows; ++r) {
    nlohmann::json cells = nlohmann::json::array();
    for (size_t e = 0; e < sum[r].size(); ++e)
      cells.push_back(count[r][e]
                          ? nlohmann::json(std::round(sum[r][e] / count[r][e] * 1000) / 1000)
                          : nlohmann::json());
    if (sum[r].empty()) cells.push_back(nlohmann::json());
    out_rows.push_back(cells);
  }
  return {{"labels", labels}, {"rows", out_rows}};
}

nlohmann::json page_data(const std::vector<LayerReport>& report) {
  nlohmann::json layers = nlohmann::json::array();
  for (const LayerReport& l : report) {
    nlohmann::json curves = nlohmann::json::object();
    for (const char* name : kCurves) {
      if (!l.summed.count(name)) continue;
      nlohmann::json values = nlohmann::json::array();
      for (const StepWindow& w : l.steps)
        values.push_back(tools::finite_or_null(w.metrics.at(name)));
      curves[name] = values;
    }
    nlohmann::json steps = nlohmann::json::array();
    for (const StepWindow& w : l.steps) steps.push_back({w.first_step, w.last_step});
    nlohmann::json summed = nlohmann::json::object();
    for (const auto& [k, v] : l.summed) summed[k] = tools::finite_or_null(v);
    const size_t experts = l.summed_counts.size();
    layers.push_back({{"layer", l.layer},
                      {"split", l.split},
                      {"records", l.records},
                      {"experts", experts},
                      {"expert_bins", std::min(kHeatRows, experts)},
                      {"steps", steps},
                      {"curves", curves},
                      {"heat", heat_map(l)},
                      {"rank_load", l.summed_rank_load},
                      {"summed", summed},
                      {"verdicts", l.verdicts}});
  }
  return layers;
}

const char* const kStyle = R"CSS(
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d2330;background:#fff}
h1{font-size:20px}h2{font-size:16px;margin:28px 0 8px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #d5d9e0;padding:3px 8px;text-align:left}
th{background:#f2f4f7}.balanced,.ok,.healthy{color:#1a7f37}.moderate,.warming_up{color:#9a6700}
.imbalanced,.pressure,.collapsed,.peaked,.diffuse{color:#cf222e;font-weight:600}
canvas{border:1px solid #d5d9e0;margin:4px 8px 4px 0;vertical-align:top}
.legend{font-size:12px;color:#57606a}
)CSS";

// Draws everything from DATA; sets data-rendered on <body> when done, and reports any
// error on the page and on the console (the browser check fails on either).
const char* const kScript = R"JS(
"use strict";
window.addEventListener("error", e => { document.body.dataset.errors = String(e.message); });
const COLORS = {balancedness:"#0969da", load_cv:"#cf222e", max_frac:"#9a6700", gini:"#8250df",
                rank_balancedness:"#1a7f37", overload_factor:"#bc4c00"};
function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  return e;
}
function fmt(v) { return v === null || v === undefined ? "nan" : Number(v).toPrecision(4); }
// Relative load (1 = an even share) on a diverging scale: blue below, red above.
function heatColor(v) {
  const t = Math.max(-1, Math.min(1, Math.log2(Math.max(v, 1e-3)) / 2));
  const a = Math.round(255 * (1 - Math.abs(t)));
  return t < 0 ? `rgb(${a},${a},255)` : `rgb(255,${a},${a})`;
}
function curves(layer) {
  const c = el("canvas", {width: 600, height: 220, "data-kind": "curves"});
  const g = c.getContext("2d"), names = Object.keys(layer.curves);
  let top = 1;
  for (const n of names) for (const v of layer.curves[n]) if (v !== null) top = Math.max(top, v);
  const n = layer.steps.length, x = i => 40 + (n > 1 ? i * 550 / (n - 1) : 275);
  const y = v => 200 - v / top * 180;
  g.strokeStyle = "#8c959f"; g.strokeRect(40, 20, 550, 180);
  g.fillStyle = "#57606a"; g.font = "11px sans-serif";
  g.fillText(fmt(top), 2, 24); g.fillText("0", 28, 200);
  g.fillText("step " + layer.steps[0][0], 40, 214);
  g.fillText(String(layer.steps[n - 1][1]), 550, 214);
  let legend = 44;
  names.forEach(name => {
    g.strokeStyle = COLORS[name];
    g.beginPath();
    let drawing = false;
    layer.curves[name].forEach((v, i) => {
      if (v === null) { drawing = false; return; }
      if (drawing) g.lineTo(x(i), y(v)); else g.moveTo(x(i), y(v));
      drawing = true;
    });
    g.stroke();
    g.fillStyle = COLORS[name];
    if (n === 1 && layer.curves[name][0] !== null) {  // one step: a dot, not a line
      g.beginPath();
      g.arc(x(0), y(layer.curves[name][0]), 3, 0, 2 * Math.PI);
      g.fill();
    }
    g.fillText(name, legend, 14);
    legend += g.measureText(name).width + 10;
  });
  return c;
}
// A heat map; `labels` (optional) names the rows in a left margin.
function heat(columns, rows, value, title, labels) {
  const cw = Math.max(2, Math.floor(520 / columns)), rh = Math.max(1, Math.floor(240 / rows));
  const margin = labels && rh >= 9 ? 100 : 0;
  const c = el("canvas", {width: margin + cw * columns, height: rh * rows, "data-kind": "heat",
                          title: title});
  const g = c.getContext("2d");
  g.font = Math.min(12, rh - 1) + "px sans-serif";
  for (let j = 0; j < rows; ++j) {
    if (margin) {
      g.fillStyle = "#57606a";
      const text = String(labels[j]);
      g.fillText(text.length > 14 ? text.slice(0, 13) + "\u2026" : text, 2, (j + 1) * rh - 2);
    }
    for (let i = 0; i < columns; ++i) {
      const v = value(i, j);
      g.fillStyle = v === null ? "#d0d7de" : heatColor(v);  // grey: no load to share
      g.fillRect(margin + i * cw, j * rh, cw, rh);
    }
  }
  return c;
}
function verdictCells(tr, v) {
  if (!v) { tr.append(el("td", {}, "")); return; }
  const detail = v.metric ? ` (${v.metric} ${fmt(v.value)} vs ${fmt(v.threshold)})` : "";
  const td = el("td", {class: v.label}, v.label + detail);
  if (v.hint) td.title = v.hint;
  tr.append(td);
}
function render() {
  const root = document.getElementById("report");
  const table = el("table");
  const head = el("tr");
  for (const h of ["layer", "steps", "experts", "balance", "capacity", "balancedness",
                   "load_cv", "max_frac", "rank_balancedness", "overload_factor"])
    head.append(el("th", {}, h));
  table.append(head);
  const name = l => l.layer + (l.split ? " (" + l.split + ")" : "");
  for (const l of DATA) {
    const tr = el("tr");
    tr.append(el("td", {}, name(l)), el("td", {}, String(l.records)),
              el("td", {}, String(l.experts)));
    verdictCells(tr, l.verdicts.balance);
    verdictCells(tr, l.verdicts.capacity);
    for (const m of ["balancedness", "load_cv", "max_frac", "rank_balancedness", "overload_factor"])
      tr.append(el("td", {}, m in l.summed ? fmt(l.summed[m]) : ""));
    table.append(tr);
  }
  root.append(el("h2", {}, "Verdicts and summed figures"), table);
  // Layer x expert: each layer's summed load, relative to an even share (neighbouring
  // layers averaged past 512).
  root.append(el("h2", {}, "Load by layer (rows) and expert (columns), summed over the log"));
  const columns = LAYER_MAP.rows.reduce((m, r) => Math.max(m, r.length), 0);
  root.append(heat(columns, LAYER_MAP.rows.length, (i, j) => {
    const row = LAYER_MAP.rows[j];
    return i < row.length ? row[i] : null;
  }, "layer x expert", LAYER_MAP.labels));
  root.append(el("p", {class: "legend"}, "Colour: load over an even share, blue below " +
                 "(white = even), red above (log scale, 4x saturates); grey: no load."));
  for (const l of DATA) {
    const section = el("section", {"data-layer": l.layer});
    const windows = l.steps.length < l.records ? " in " + l.steps.length + " windows" : "";
    section.append(el("h2", {}, "Layer " + name(l) + ": " + l.records + " steps, " +
                      l.experts + " experts" + windows));
    section.append(curves(l));
    section.append(heat(l.heat.length, l.expert_bins, (i, j) => l.heat[i][j],
                        "expert (rows) over time (columns)"));
    if (l.rank_load.length)
      section.append(el("p", {}, "Load by rank: " + l.rank_load.join(", ")));
    root.append(section);
  }
  document.body.dataset.rendered = "1";
}
render();
)JS";

}  // namespace

std::string html_report(const std::vector<LayerReport>& report, const std::string& title) {
  std::string page = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>";
  page += escape_html("moe-stats: " + title);
  page += "</title>\n<style>";
  page += kStyle;
  page += "</style></head>\n<body>\n<h1>";
  page += escape_html("moe-stats: " + title);
  page += "</h1>\n<div id=\"report\"></div>\n<script>\nconst DATA = ";
  page += script_json(page_data(report));
  page += ";\nconst LAYER_MAP = ";
  page += script_json(layer_map(report));
  page += ";\n";
  page += kScript;
  page += "</script>\n</body></html>\n";
  return page;
}

}  // namespace moe::stats
