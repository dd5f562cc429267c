#!/usr/bin/env python3
"""Check deploy/grafana/openai-admin-gateway.json against the metrics the gateway exports.

  check_dashboard.py DASHBOARD.json --doc docs/internal-api.md [--metrics-file SCRAPE.txt]

Metric names (and their label names) come from a saved /metrics scrape when
--metrics-file is given (Prometheus text or OpenMetrics), else from the "## Metrics"
section of docs/internal-api.md.

Checks:
  * the file is JSON and an importable dashboard: schemaVersion, uid, title, an
    `__inputs` Prometheus datasource that every panel/target/variable uses, unique panel
    ids, gridPos inside the 24-column grid and not overlapping;
  * every PromQL expression (panel targets and `label_values(...)` variables) parses
    (promql-parser, a Rust port of Prometheus' parser), after Grafana's variables are
    substituted;
  * every metric it selects is exported; every label it matches on or groups by exists
    on those metrics (plus job/instance added by Prometheus, and `le` on _bucket);
  * histogram_quantile() is applied to a _bucket series grouped by `le`;
  * the panels the deployment relies on are present (request rate by status, cache hit
    ratio, latency quantiles, 429s by client, in-flight, cache entries, reloads).
Exit 0 when clean, 1 with one line per problem otherwise.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import promql_parser as pp

# Labels Prometheus attaches to every scraped series.
TARGET_LABELS = {"job", "instance"}

# Grafana variables and what to put in their place so the expression parses.
GRAFANA_VARS = [
    (re.compile(r"\$__rate_interval|\$\{__rate_interval\}"), "5m"),
    (re.compile(r"\$__interval|\$\{__interval\}"), "1m"),
    (re.compile(r"\$__range|\$\{__range\}"), "1h"),
    (re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)"), ".*"),  # $job, ${instance}, ${x:regex}
]

# Metrics the dashboard must use (what the deployment docs promise to show).
REQUIRED = {
    "gateway_requests_total": "request rate by status",
    "gateway_cache_hits_total": "cache hit ratio",
    "gateway_cache_misses_total": "cache hit ratio",
    "gateway_upstream_duration_seconds_bucket": "upstream latency quantiles",
    "gateway_request_duration_seconds_bucket": "request latency quantiles",
    "gateway_rate_limited_total": "429s by client",
    "gateway_requests_in_flight": "in-flight requests",
    "gateway_upstream_in_flight": "upstream in-flight requests",
    "gateway_cache_entries": "cache entries",
    "gateway_config_reloads_total": "config reloads",
}


# --------------------------------------------------------------------------- metric sources
def metrics_from_doc(path: Path) -> dict[str, set[str]]:
    """{series name: label names} from the '## Metrics' section of internal-api.md."""
    text = path.read_text()
    m = re.search(r"^## Metrics.*?$(.*?)(?=^## |\Z)", text, re.S | re.M)
    if not m:
        raise SystemExit(f"{path}: no '## Metrics' section")
    out: dict[str, set[str]] = {}
    for name, labels, hist in re.findall(
        r"\b(gateway_[a-z0-9_]+)(?:\{([^}]*)\})?(\s*\(histogram\))?", m.group(1)
    ):
        lbls = {x.strip() for x in labels.split(",") if x.strip()}
        if hist:
            out[name + "_bucket"] = lbls | {"le"}
            out[name + "_sum"] = set(lbls)
            out[name + "_count"] = set(lbls)
        else:
            out[name] = lbls
    if not out:
        raise SystemExit(f"{path}: no gateway_* metric names in the '## Metrics' section")
    return out


SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+\S+")
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"(?:[^"\\]|\\.)*"')
SUFFIXES = {
    "counter": ["_total", "_created"],
    "histogram": ["_bucket", "_sum", "_count", "_created"],
    "gaugehistogram": ["_bucket", "_gsum", "_gcount"],
    "summary": ["", "_sum", "_count", "_created"],
    "info": ["_info"],
    "gauge": [""],
    "stateset": [""],
    "unknown": [""],
    "untyped": [""],
}


def metrics_from_scrape(path: Path) -> tuple[dict[str, set[str]], set[str]]:
    """Series names + label names from a saved /metrics response.

    A family declared by `# TYPE` counts even with no samples yet (a labelled counter
    such as gateway_rate_limited_total has none until the first 429); its labels are then
    unknown and returned in the second set so label checks skip them."""
    series: dict[str, set[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("# TYPE "):
            parts = line.split()
            if len(parts) >= 4:
                fam, typ = parts[2], parts[3].lower()
                for suf in SUFFIXES.get(typ, [""]):
                    # Prometheus text format already names counters with _total.
                    name = fam if (typ == "counter" and fam.endswith("_total") and suf == "_total") else fam + suf
                    series.setdefault(name, set())
                    if typ == "counter" and fam.endswith("_total"):
                        series.setdefault(fam, set())
        elif line and not line.startswith("#"):
            m = SAMPLE_RE.match(line)
            if m:
                lbls = {k for k in LABEL_RE.findall(m.group(3) or "")}
                series.setdefault(m.group(1), set()).update(lbls)
    sampled = set()
    for line in path.read_text().splitlines():
        m = SAMPLE_RE.match(line.strip()) if not line.startswith("#") else None
        if m:
            sampled.add(m.group(1))
    unknown_labels = {n for n in series if n not in sampled}
    if not series:
        raise SystemExit(f"{path}: no metrics found (is it a /metrics scrape?)")
    return series, unknown_labels


# --------------------------------------------------------------------------- PromQL walk
class ExprInfo:
    def __init__(self) -> None:
        self.selectors: list[tuple[str | None, list[tuple[str, str]]]] = []
        self.problems: list[str] = []


def selector_name(vs) -> tuple[str | None, list[tuple[str, str]]]:
    matchers = [(m.name, m.value) for m in vs.matchers.matchers]
    for om in getattr(vs.matchers, "or_matchers", []) or []:
        matchers += [(m.name, m.value) for m in om]
    name = vs.name
    if name is None:
        for k, v in matchers:
            if k == "__name__":
                name = v
    return name, [(k, v) for k, v in matchers if k != "__name__"]


# Series whose label names are unknown (declared in a scrape but with no samples yet,
# and not described in the doc either): label checks involving them are skipped.
UNKNOWN_LABELS: set[str] = set()


def labels_in(expr, known: dict[str, set[str]]) -> set[str] | None:
    """Label names the series of `expr` can carry (union over its selectors), or None
    when a selector's labels are unknown."""
    out: set[str] = set()
    for name, _ in collect(expr, ExprInfo(), known).selectors:
        if name in UNKNOWN_LABELS:
            return None
        out |= known.get(name or "", set())
    return out | TARGET_LABELS


def collect(expr, info: ExprInfo, known: dict[str, set[str]]) -> ExprInfo:
    if isinstance(expr, pp.VectorSelector):
        info.selectors.append(selector_name(expr))
    elif isinstance(expr, pp.MatrixSelector):
        info.selectors.append(selector_name(expr.vector_selector))
    elif isinstance(expr, pp.AggregateExpr):
        collect(expr.expr, info, known)
        if expr.param is not None:
            collect(expr.param, info, known)
        mod = expr.modifier
        if mod is not None and mod.type == pp.AggModifierType.By:
            have = labels_in(expr.expr, known)
            for lbl in mod.labels if have is not None else []:
                if lbl not in have:
                    info.problems.append(f"groups by label {lbl!r}, which no series in it has ({sorted(have)})")
    elif isinstance(expr, pp.Call):
        args = list(expr.args)
        if expr.func.name == "histogram_quantile":
            inner = collect(args[1], ExprInfo(), known)
            if not inner.selectors or not all((n or "").endswith("_bucket") for n, _ in inner.selectors):
                info.problems.append("histogram_quantile() over something other than *_bucket series")
            have = labels_in(args[1], known)
            if have is not None and "le" not in have - TARGET_LABELS:
                info.problems.append("histogram_quantile() input has no `le` label")
            agg = args[1]
            while isinstance(agg, pp.ParenExpr):
                agg = agg.expr
            if isinstance(agg, pp.AggregateExpr) and (
                agg.modifier is None
                or (agg.modifier.type == pp.AggModifierType.By and "le" not in agg.modifier.labels)
                or (agg.modifier.type == pp.AggModifierType.Without and "le" in agg.modifier.labels)
            ):
                info.problems.append("histogram_quantile() input is aggregated without `by (le)`")
        for a in args:
            collect(a, info, known)
    elif isinstance(expr, pp.BinaryExpr):
        collect(expr.lhs, info, known)
        collect(expr.rhs, info, known)
    elif isinstance(expr, (pp.ParenExpr, pp.UnaryExpr, pp.SubqueryExpr)):
        collect(expr.expr, info, known)
    return info


def substitute(expr: str) -> str:
    for rx, repl in GRAFANA_VARS:
        expr = rx.sub(repl, expr)
    return expr


# --------------------------------------------------------------------------- dashboard walk
def all_panels(panels):
    for p in panels:
        yield p
        yield from all_panels(p.get("panels", []))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dashboard", type=Path)
    ap.add_argument("--doc", type=Path, required=True)
    ap.add_argument("--metrics-file", type=Path)
    a = ap.parse_args()

    problems: list[str] = []
    try:
        dash = json.loads(a.dashboard.read_text())
    except json.JSONDecodeError as e:
        print(f"{a.dashboard}: not JSON: {e}")
        return 1

    if a.metrics_file:
        known, no_samples = metrics_from_scrape(a.metrics_file)
        source = f"scrape {a.metrics_file}"
        doc_known = metrics_from_doc(a.doc)
        for n in sorted(set(doc_known) - set(known)):
            if doc_known[n] - {"le"}:
                # prometheus-client prints a labelled family only once it has a sample
                # (gateway_rate_limited_total before the first 429): trust the doc for it.
                known[n] = set(doc_known[n])
                print(f"note: {n} has no samples in the scrape; using the doc's labels {sorted(doc_known[n])}")
            else:
                print(f"note: {n} is in {a.doc} but not in the scrape (an unlabelled metric is always printed)")
        # A family with no samples yet: take its labels from the doc, if it names them.
        for n in no_samples:
            if n in doc_known:
                known[n] = set(doc_known[n])
            else:
                UNKNOWN_LABELS.add(n)
    else:
        known = metrics_from_doc(a.doc)
        source = str(a.doc)

    # --- importable-dashboard structure
    if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 36:
        problems.append(f"schemaVersion {dash.get('schemaVersion')!r}: want an int >= 36")
    for k in ("uid", "title"):
        if not dash.get(k):
            problems.append(f"missing {k}")
    if dash.get("id") is not None:
        problems.append("id must be null in an exported dashboard")
    inputs = [i for i in dash.get("__inputs", []) if i.get("type") == "datasource" and i.get("pluginId") == "prometheus"]
    if len(inputs) != 1:
        problems.append("__inputs must declare exactly one Prometheus datasource input")
    ds_ref = "${%s}" % inputs[0]["name"] if inputs else None

    def check_ds(where: str, ds) -> None:
        if not isinstance(ds, dict) or ds.get("type") != "prometheus" or ds.get("uid") != ds_ref:
            problems.append(f"{where}: datasource {ds!r} is not the __inputs Prometheus datasource {ds_ref}")

    exprs: list[tuple[str, str]] = []
    ids: set[int] = set()
    cells: dict[tuple[int, int], str] = {}
    for p in all_panels(dash.get("panels", [])):
        title = p.get("title", "?")
        pid = p.get("id")
        if pid in ids:
            problems.append(f"panel {title!r}: duplicate id {pid}")
        ids.add(pid)
        g = p.get("gridPos") or {}
        if not all(isinstance(g.get(k), int) for k in "hwxy"):
            problems.append(f"panel {title!r}: gridPos needs integer h, w, x, y")
        else:
            if g["x"] < 0 or g["w"] < 1 or g["x"] + g["w"] > 24:
                problems.append(f"panel {title!r}: gridPos outside the 24-column grid")
            for yy in range(g["y"], g["y"] + g["h"]):
                for xx in range(g["x"], g["x"] + g["w"]):
                    if (xx, yy) in cells:
                        problems.append(f"panel {title!r} overlaps panel {cells[(xx, yy)]!r}")
                        break
                    cells[(xx, yy)] = title
                else:
                    continue
                break
        if p.get("type") == "row":
            continue
        if not p.get("targets"):
            problems.append(f"panel {title!r}: no queries")
        check_ds(f"panel {title!r}", p.get("datasource"))
        refs = [t.get("refId") for t in p.get("targets", [])]
        if len(refs) != len(set(refs)) or None in refs:
            problems.append(f"panel {title!r}: refIds must be present and unique")
        for t in p.get("targets", []):
            check_ds(f"panel {title!r} target {t.get('refId')}", t.get("datasource"))
            if not t.get("expr"):
                problems.append(f"panel {title!r} target {t.get('refId')}: empty expr")
                continue
            exprs.append((f"panel {title!r} {t.get('refId')}", t["expr"]))

    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        check_ds(f"variable {v.get('name')}", v.get("datasource"))
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"\s*label_values\((.*),\s*([a-zA-Z_]\w*)\s*\)\s*", q or "")
        if m:
            exprs.append((f"variable {v.get('name')}", m.group(1)))
            lbl_check = (f"variable {v.get('name')}", m.group(1), m.group(2))
            try:
                have = labels_in(pp.parse(substitute(m.group(1))), known)
                if have is not None and lbl_check[2] not in have:
                    problems.append(f"{lbl_check[0]}: label {lbl_check[2]!r} not on {m.group(1)}")
            except Exception:  # reported below as a parse error
                pass
        elif q:
            exprs.append((f"variable {v.get('name')}", q))

    # --- PromQL
    used: set[str] = set()
    for where, raw in exprs:
        try:
            ast = pp.parse(substitute(raw))
        except Exception as e:  # promql_parser raises ValueError-like errors
            problems.append(f"{where}: PromQL does not parse: {e}: {raw}")
            continue
        info = collect(ast, ExprInfo(), known)
        for pr in info.problems:
            problems.append(f"{where}: {pr}")
        for name, matchers in info.selectors:
            if name is None:
                problems.append(f"{where}: selector without a metric name")
                continue
            used.add(name)
            if name not in known:
                problems.append(f"{where}: metric {name} is not exported (per {source})")
                continue
            if name in UNKNOWN_LABELS:
                continue
            for lbl, _ in matchers:
                if lbl not in known[name] | TARGET_LABELS:
                    problems.append(f"{where}: {name} has no label {lbl!r} (has {sorted(known[name])})")

    for name, what in REQUIRED.items():
        if name not in used:
            problems.append(f"no panel uses {name} ({what})")

    unused = sorted(n for n in known if n not in used and not n.endswith(("_sum", "_count", "_created")))
    print(f"{a.dashboard}: {len(exprs)} PromQL expressions, {len(used)} metrics, checked against {source}")
    if unused:
        print(f"note: exported but not on the dashboard: {', '.join(unused)}")
    for p in problems:
        print(f"ERROR {a.dashboard}: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
