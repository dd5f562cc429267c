#!/usr/bin/env python3
"""Renders benches/load/results.json (written by bench.py) as benches/README.md.

Usage: report.py RESULTS_JSON README_MD [--scaling SCALING_JSON]

Medians over the repeats; ratios are taken per repeat (the runs compared ran
seconds apart) and the median of those is shown, all from one run. The Goals
table is printed to stdout too.

--scaling names the JSON file of the in-process thread-scaling bench:
  {"threads": {"1": {"req_per_s": [...]}, "2": {"req_per_s": [...]}},
   "shared_writes": ["...", ...]}
Without it the scaling goal reads "not run".
"""

import argparse
import json
import statistics
from collections import defaultdict

SCENARIOS = {
    "hit_one": "Hits, one id",
    "hit_10k": "Hits spread over 10,000 ids",
    "hit_10k_unpinned": "Hits spread over 10,000 ids, unpinned (both cores, nothing pinned)",
    "miss": "Misses (every request a new id)",
    "pass_get": "Pass-through, GET /v1/organization/users?limit=1",
    "pass_post": "Pass-through, 1 KiB POST /v1/organization/invites",
}
PASS_NAMES = {"pass_get": "GET list (`?limit=1`)", "pass_post": "POST 1 KiB"}
TARGETS = ["gateway", "gateway_before", "nginx", "ceiling", "ceiling_spread", "ceiling_contract", "floor_pool",
           "floor_conn", "direct"]
TARGET_NAMES = {
    "gateway": "gateway",
    "gateway_before": "gateway (before)",
    "nginx": "nginx proxy_cache",
    "ceiling": "ceiling (bare hyper)",
    "ceiling_spread": "ceiling, 10k bodies",
    "ceiling_contract": "ceiling, 10k bodies, key check + hit headers",
    "floor_pool": "hyper floor (server + pooled client)",
    "floor_conn": "hyper floor (server + own connection)",
    "direct": "upstream direct",
}
# The performance issue's goals (the Goals table).
GOAL_SCALING = 1.85  # in-process req/s, 2 threads / 1 thread
GOAL_UNPINNED = 1.3  # hits, unpinned, gateway / nginx req/s, with p99 <= nginx
GOAL_PASS_EFF = 0.9  # pass-through req per CPU-s, gateway / nginx
GOAL_PINNED = 1.7  # hits, pinned one core, gateway / nginx req/s
# Earlier goals, kept as further checks.
GOAL_HIT_VS_CEILING = 0.85
# Hits per CPU-second, gateway / bare hyper ceiling (pinned, 10k ids).
GOAL_HIT_EFF_CEILING = 0.8
GOAL_OVERHEAD_BYTES = 350


HOW_TO_RUN = [
    ("BEFORE_BIN=<old gateway binary>", "adds the target *gateway (before)*: the same config and scenarios "
     "against that binary, interleaved with the others in every repeat, so the Goals table shows before and "
     "after from one machine and run (`BEFORE_LABEL=<commit>` names it in the report)"),
    ("SCALING=<file.json>", "the in-process thread-scaling bench's results, for goal 1 (else *not run*)"),
    ("BIN_DIR=<dir>", "use prebuilt binaries from that directory (`openai-admin-gateway`, and `bench_upstream`, "
     "`bench_ceiling`, `bench_proxy`, `cache_floor` in it or its `examples/`) instead of building"),
    ("WORKERS=N", "`server.workers = N` in the unpinned gateway's config (default: unset, the gateway's own "
     "default); UNPINNED_THREADS=2 sets wrk's threads there"),
    ("ONLY=scenario,...", "a subset of " + ", ".join(f"`{s}`" for s in SCENARIOS)),
    ("DURATION=10, REPEATS=3, CONNS=64,256", "seconds per wrk run, repeats (≥ 3 for a run of record), "
     "connection counts"),
    ("MEMORY=1, PROFILE=0, PIN=1", "the 100k / 1M users RSS test, perf profiles, pinning of the pinned "
     "scenarios"),
    ("MEMORY_ONLY=1", "the memory test alone (e.g. `BIN_DIR=` an older build), written to "
     "`target/memory-only.json`; this file is left as it is"),
    ("TIME_LIMIT=4200", "hard stop (s) for the measuring part"),
]


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def ms(us):
    return f"{us / 1000:.2f}"


def eff(r):
    """Requests per CPU-second the server spent: robust to CPU stolen by others."""
    return r["rps"] / max(r["server_cpu_pct"] / 100, 1e-9)


def cpu_s(r):
    """CPU-seconds the server used during the run (older results lack the field)."""
    if "server_cpu_s" in r:
        return r["server_cpu_s"]
    return r["server_cpu_pct"] / 100 * r["duration_us"] / 1e6


def scaling_row(path):
    """(measured text, ok or None) for the in-process thread-scaling goal."""
    if not path:
        return "not run", None
    try:
        sc = json.load(open(path))
        one = sc["threads"]["1"]["req_per_s"]
        two = sc["threads"]["2"]["req_per_s"]
    except OSError as e:
        return f"not run (scaling file: {e.strerror})", None
    except (ValueError, KeyError, TypeError) as e:
        return f"not run (scaling file not in the expected shape: {type(e).__name__} {e})", None
    if not one or not two:
        return "not run (no samples)", None
    r = med(two) / med(one)
    sw = sc.get("shared_writes") or []
    text = (f"{r:.2f}× (median req/s: 1 thread {med(one):,.0f} over {len(one)} runs, "
            f"2 threads {med(two):,.0f} over {len(two)}); shared writes on the hot path: "
            + (", ".join(f"`{x}`" for x in sw) if sw else "none"))
    return text, r >= GOAL_SCALING


def fmt_ratio(x):
    return "–" if x is None else f"{x:.2f}×"


def main(src, dst, scaling=None):
    d = json.load(open(src))
    groups = defaultdict(list)
    for r in d["runs"]:
        groups[(r["scenario"], r["conns"], r["target"])].append(r)

    def stat(scen, conns, target, key):
        rs = groups.get((scen, conns, target))
        return med([r[key] for r in rs]) if rs else None

    scenarios = d.get("scenarios") or sorted({r["scenario"] for r in d["runs"]})
    out = []
    w = out.append
    m = d["machine"]
    pin = d["pinning"]
    w("# Load benchmark: gateway vs nginx")
    w("")
    w("<!-- Generated by benches/load/run.sh (benches/load/report.py). Do not edit by hand: re-run it. -->")
    w("")
    w("```sh")
    w(d["command"])
    w("```")
    w("")
    w(f"- Date: {d['date']}")
    src = d.get("source")
    if src:
        dirty = src["uncommitted"]
        w(
            f"- Source measured: commit `{src['commit']}` ({src['subject']})"
            + (f", plus uncommitted changes to {', '.join('`' + f + '`' for f in dirty)}" if dirty else "")
            + f"; gateway binary sha256 `{src['binary_sha256']}…` (copied at the start, so a rebuild during the run changes nothing)"
        )
    bf = d.get("before")
    if bf:
        w(
            f"- Before: target *gateway (before)* is an older gateway binary"
            + (f" ({bf['label']})" if bf.get("label") else "")
            + f", sha256 `{bf['binary_sha256']}…`, run with the same config and scenarios, interleaved "
            "with the others in every repeat"
        )
    w(f"- Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['mem_total_kb'] // 1024} MiB RAM, Linux {m['kernel']}")
    w(f"- Software: {m['rustc']}; {m['nginx']}; {m['wrk']}")
    other = [r.get("other_cpu_pct", 0) for r in d["runs"]]
    w(
        f"- Load average at start / end: {' '.join(d['loadavg_start'])} / {' '.join(d['loadavg_end'])}; "
        f"CPU used by processes outside the benchmark during the measured runs: median "
        f"{med(other):.0f}% (max {max(other, default=0):.0f}%) of one core"
    )
    for scen, why in (d.get("skipped") or {}).items():
        w(f"- **{scen} not run**: {why}.")
    if other and med(other) > 10:
        w("")
        w(
            f"> **Noisy machine:** other processes (builds, tests) used a median {med(other):.0f}% of a core "
            "while this ran. Absolute numbers are low and jittery; compare the ratios, which come from "
            "interleaved runs of the same session."
        )
    w("")
    w("## How to run")
    w("")
    w(
        "`benches/load/run.sh` builds the release binaries, runs every scenario (3 repeats of 10 s, 64 and "
        "256 connections, the memory test) and rewrites this file; it prints the expected total time at "
        "the start. Knobs (environment):"
    )
    w("")
    for k, v in HOW_TO_RUN:
        w(f"- `{k}`: {v}")
    w("")
    if not d.get("complete"):
        w("**This run did not complete (it aborted); the tables show what it measured before that.**")
        w("")
    w("## Method")
    w("")
    if pin["server_cpus"]:
        w(
            f"- Pinning (`taskset`): the server under test runs on CPU {pin['server_cpus']}; wrk and the fake "
            f"upstream that the proxies talk to run on CPU {pin['client_cpus']}. With only {m['nproc']} cores this "
            "gives every server the same single core and keeps the load generator from competing with it. "
            f"The gateway (`server.workers`, thread-per-core) and the ceiling size themselves to the CPUs they may "
            f"use ({pin['server_ncpu']} worker), nginx gets `worker_processes {pin['server_ncpu']}`. For the *upstream direct* rows "
            "a second upstream instance runs on the server core."
        )
    else:
        w(f"- No pinning: all processes float over {m['nproc']} CPUs; nginx `worker_processes {pin['server_ncpu']}`.")
    if "hit_10k_unpinned" in scenarios:
        wk = d.get("workers")
        w(
            f"- *Unpinned* (hits over 10k ids, both cores): a second set of servers with its own fake upstream, "
            "nothing pinned (server, wrk and upstream float over all CPUs). The gateway uses "
            + (f"`server.workers = {wk}`" if wk else "its default worker count (the CPUs it may use)")
            + "; nginx runs `worker_processes auto` with `listen … reuseport`; wrk runs "
            f"`-t{d.get('unpinned_wrk_threads', 1)}`. Server CPU can reach {m['nproc'] * 100}% here."
        )
    w(
        f"- Load (pinned scenarios): `wrk -t1 -cN -d{d['duration_s']}s --latency` at N = {', '.join(map(str, d['conns']))}, "
        f"{d['repeats']} repeats, runs interleaved (each repeat runs every scenario × N × server); "
        "tables show medians over the repeats (rps range in brackets). Any socket error or "
        "non-2xx response aborts the run."
    )
    w(
        "- gateway: `openai-admin-gateway` (release build), `RUST_LOG=warn` (so the per-request access log "
        "line is filtered out and logging is not the bottleneck), one client key with an `allow` list, "
        "TTL 300 s, `max_entries` 100000, upstream `http://127.0.0.1/v1` (fake)."
    )
    w(
        "- nginx: `proxy_cache` on tmpfs (`keys_zone` 256m, `levels=1:2`), `proxy_cache_valid 200 300s`, "
        "`proxy_cache_lock on`, `proxy_cache_key $uri`, `open_file_cache`, client key checked with "
        "`map $http_authorization` (else 401), `proxy_set_header Authorization \"Bearer <admin>\"`, upstream "
        "`keepalive 512`, `access_log off`, `keepalive_requests` unlimited."
    )
    w(
        "- ceiling: `examples/bench_ceiling.rs`, bare hyper HTTP/1.1 answering every request with the "
        f"stored user bytes ({d.get('body_bytes')} B); *ceiling, 10k bodies* (hits over 10k ids only): the same "
        "server holding 10,000 copies, each its own allocation, answering each id with its copy, so its "
        "answers are not all hot in the CPU's caches, as a cache's are not. upstream: `examples/bench_upstream.rs` "
        "(a ~500-byte `OrganizationUser` per id, POST echo, admin key checked)."
    )
    w(
        "- hyper floor (pass-through only): `examples/bench_proxy.rs`, a bare hyper HTTP/1.1 server that "
        "forwards every request to the same upstream with hyper's client, the credential replaced by the "
        "admin key, and nothing else (no auth, routing, limits, budget, metrics, logs). *pooled client*: "
        "hyper-util's legacy client, as the gateway reaches its upstream (a connection task per upstream "
        "connection and a channel to it). *own connection*: each client connection gets its own upstream "
        "connection (`hyper::client::conn::http1`), driven in the client connection's task: the leanest "
        "exchange hyper offers. What the gateway spends above the floor is its own work; what the floor "
        "spends above nginx is hyper's."
    )
    w(
        "- Pass-through: *POST 1 KiB* sends a 1,024-byte JSON body (asserted in `lua/post.lua`) to "
        "`/v1/organization/invites`, echoed by the upstream"
        + ("; *GET list* requests `/v1/organization/users?limit=1`, which neither proxy caches. Both"
           if "pass_get" in scenarios else ";")
        + " pinned like the hits."
    )
    wp = d.get("warm_passes", {"gateway": 3, "nginx": 1})
    purge = (
        "the gateway's cache is first emptied through the admin API (`DELETE /cache`): moka's TinyLFU "
        "admission refuses a new hot set into a full cache whose entries were hotter, so without it hits "
        "turn into upstream fetches; "
        if d.get("purge_before_hits") else ""
    )
    w(
        f"- Hits: before each hit run {purge}the proxy is warmed with a fresh id set ({wp['gateway']} passes "
        f"through the gateway, {wp['nginx']} through nginx). *upstream reqs* is what reached the "
        "upstream during the measured run (0 = every request was a hit; a few = ids whose warm-up request "
        "was cut off by the end of a wrk warm-up chunk). Misses use a new id per request (wrk Lua counter)."
    )
    w(
        "- CPU: utime+stime delta of the server's processes (nginx: master + workers + cache manager) over "
        "the run, 100% = one core. RSS: VmRSS (summed for nginx) at the end of the run. "
        "wrk CPU near 100% means the client, not the server, was the limit."
    )
    w("")

    # ---- goals: paired by repeat (runs of one repeat are seconds apart and
    # share the machine's state), then the median over the repeats.
    def ratio(a, b):
        return a / b if a is not None and b else None

    def by_rep(scen, conns, target):
        return {r["rep"]: r for r in groups.get((scen, conns, target), [])}

    def paired(scen, conns, a, b, fn):
        ra, rb = by_rep(scen, conns, a), by_rep(scen, conns, b)
        vals = [fn(ra[k], rb[k]) for k in sorted(set(ra) & set(rb))]
        return med(vals) if vals else None

    def rps_ratio(scen, conns, a, b):
        return paired(scen, conns, a, b, lambda x, y: x["rps"] / y["rps"])

    def eff_ratio(scen, conns, a, b):
        return paired(scen, conns, a, b, lambda x, y: eff(x) / eff(y))

    gc = 64 if 64 in d["conns"] else d["conns"][0]
    has_before = bool(d.get("before"))
    targets_ab = ["gateway"] + (["gateway_before"] if has_before else [])

    def hits_cell(scen, t, want_p99):
        """gateway (or gateway_before) / nginx req/s on scen, and p99s."""
        r = rps_ratio(scen, gc, t, "nginx")
        if r is None:
            return "not run", None
        text = f"{r:.2f}× nginx req/s"
        ok = r >= (GOAL_UNPINNED if want_p99 else GOAL_PINNED)
        p99r = paired(scen, gc, t, "nginx", lambda x, y: x["p99_us"] / y["p99_us"])
        text += (f"; p99 {ms(stat(scen, gc, t, 'p99_us'))} vs {ms(stat(scen, gc, 'nginx', 'p99_us'))} ms "
                 f"({p99r:.2f}×)")
        if want_p99:
            ok = ok and p99r <= 1
        if t == "gateway_before":
            ab = rps_ratio(scen, gc, "gateway", "gateway_before")
            if ab is not None:
                text += f"; after / before req/s {ab:.2f}×"
        return text, ok

    def pass_cell(t):
        parts, oks = [], []
        for scen, name in PASS_NAMES.items():
            r = eff_ratio(scen, gc, t, "nginx")
            if r is None:
                parts.append(f"{name} not run")
                oks.append(None)
                continue
            oks.append(r >= GOAL_PASS_EFF)
            extra = ""
            if t == "gateway_before":
                ab = eff_ratio(scen, gc, "gateway", "gateway_before")
                extra = f" (after / before {ab:.2f}×)" if ab is not None else ""
            if t == "gateway":
                # Where hyper itself stands on the same requests (bench_proxy).
                floors = [(f, eff_ratio(scen, gc, f, "nginx")) for f in ("floor_pool", "floor_conn")]
                floors = [f"{f.split('_')[1]} {v:.2f}×" for f, v in floors if v is not None]
                if floors:
                    extra = f" (hyper floor: {', '.join(floors)})"
            parts.append(f"{name} {r:.2f}×{extra}")
        # Not met if one is below the target; not run if one is missing.
        return "; ".join(parts), (False if False in oks else None if None in oks else True)

    sc_text, sc_ok = scaling_row(scaling)
    rows = [(
        "1. In-process thread scaling: req/s with 2 threads / 1 thread",
        f"≥ {GOAL_SCALING}×", sc_text, "–", sc_ok,
    )]
    cells = {t: hits_cell("hit_10k_unpinned", t, True) for t in targets_ab}
    rows.append((
        f"2. Hits over 10k ids, unpinned (both cores), c={gc}: gateway / nginx req/s, p99",
        f"≥ {GOAL_UNPINNED}×, p99 ≤ nginx", cells["gateway"][0],
        cells["gateway_before"][0] if has_before else "–", cells["gateway"][1],
    ))
    cells = {t: pass_cell(t) for t in targets_ab}
    rows.append((
        f"3. Pass-through, pinned one core, c={gc}: gateway / nginx req per CPU-s",
        f"≥ {GOAL_PASS_EFF}× each", cells["gateway"][0],
        cells["gateway_before"][0] if has_before else "–", cells["gateway"][1],
    ))
    cells = {t: hits_cell("hit_10k", t, False) for t in targets_ab}
    rows.append((
        f"4. Hits over 10k ids, pinned one core, c={gc}: gateway / nginx req/s",
        f"≥ {GOAL_PINNED}×", cells["gateway"][0],
        cells["gateway_before"][0] if has_before else "–", cells["gateway"][1],
    ))
    def added_p50_cell(t):
        parts, oks = [], []
        for scen, name in PASS_NAMES.items():
            ga = paired(scen, gc, t, "direct", lambda x, y: x["p50_us"] - y["p50_us"])
            na = paired(scen, gc, "nginx", "direct", lambda x, y: x["p50_us"] - y["p50_us"])
            if None in (ga, na):
                parts.append(f"{name} not run")
                oks.append(None)
                continue
            oks.append(ga <= na)
            extra = ""
            if t == "gateway":
                fa = paired(scen, gc, "floor_conn", "direct", lambda x, y: x["p50_us"] - y["p50_us"])
                extra = f" (hyper floor, own connection: +{ms(fa)} ms)" if fa is not None else ""
            parts.append(f"{name} +{ms(ga)} ms vs nginx +{ms(na)} ms{extra}")
        return "; ".join(parts), (False if False in oks else None if None in oks else True)

    cells = {t: added_p50_cell(t) for t in targets_ab}
    rows.append((
        f"5. Pass-through, pinned, c={gc}: added p50 over the upstream direct",
        "≤ nginx's, each", cells["gateway"][0],
        cells["gateway_before"][0] if has_before else "–", cells["gateway"][1],
    ))

    def ceiling_cell(t):
        r = eff_ratio("hit_10k", gc, t, "ceiling")
        if r is None:
            return "not run", None
        text = f"{r:.2f}× ceiling per CPU-s (req/s {rps_ratio('hit_10k', gc, t, 'ceiling'):.2f}×)"
        rs = eff_ratio("hit_10k", gc, t, "ceiling_spread")
        if rs is not None:
            text += f"; {rs:.2f}× the ceiling serving 10k distinct bodies"
        rc = eff_ratio("hit_10k", gc, t, "ceiling_contract")
        if rc is not None:
            text += f"; {rc:.2f}× that ceiling checking the key and sending the hit's headers"
        return text, r >= GOAL_HIT_EFF_CEILING

    cells = {t: ceiling_cell(t) for t in targets_ab}
    rows.append((
        f"6. Hits over 10k ids, pinned, c={gc}: gateway / bare hyper ceiling, req per CPU-s",
        f"≥ {GOAL_HIT_EFF_CEILING}×", cells["gateway"][0],
        cells["gateway_before"][0] if has_before else "–", cells["gateway"][1],
    ))
    mem = d.get("memory")
    if mem and mem.get("after_reads"):
        last = mem["after_reads"]
        rows.append((
            f"7. {last['users']:,} users cached, then {last['reads']:,} reads over {last['distinct_ids']:,} of "
            "them: bytes per user over the body, the per-thread fronts' copies included",
            f"≤ {GOAL_OVERHEAD_BYTES} B", f"{last['overhead_per_entry']:.0f} B over the {mem['body_bytes']}-byte body",
            "–", last["overhead_per_entry"] <= GOAL_OVERHEAD_BYTES,
        ))
    elif mem and mem.get("points"):
        last = max(mem["points"], key=lambda p: p["users"])
        rows.append((
            f"7. {last['users']:,} users cached: bytes per user over the body (fronts included, see Memory)",
            f"≤ {GOAL_OVERHEAD_BYTES} B", f"{last['overhead_per_entry']:.0f} B over the {mem['body_bytes']}-byte body",
            "–", last["overhead_per_entry"] <= GOAL_OVERHEAD_BYTES,
        ))
    else:
        rows.append(("7. 1M users cached: bytes per user over the body", f"≤ {GOAL_OVERHEAD_BYTES} B",
                     "not run", "–", None))
    status = {True: "**met**", False: "**not met**", None: "not run"}
    table = ["| goal | target | now (gateway) | before (gateway_before) | status |", "|---|---|---|---|---|"]
    table += [f"| {g} | {tgt} | {now} | {bef} | {status[ok]} |" for g, tgt, now, bef, ok in rows]
    w("## Goals")
    w("")
    w(
        f"The performance issues' goals. Ratios are taken per repeat (the runs they compare ran "
        f"seconds apart) and the median over the {d['repeats']} repeat(s) is shown; {gc} connections. "
        "*before* is the same ratio for the older binary measured in the same run"
        + ("" if has_before else " (not run: pass `BEFORE_BIN=<old binary>` to run.sh)")
        + ". Row 1 comes from the in-process bench's JSON file (`SCALING=<file>`), not from wrk."
    )
    w("")
    out.extend(table)
    w("")
    print("Goals (median of repeats):")
    print("\n".join(table))

    # ---- further checks (earlier goals)
    checks = []
    parts, all_ok, any_ = [], True, False
    for scen in ("hit_one", "hit_10k"):
        for c in d["conns"]:
            r = rps_ratio(scen, c, "gateway", "ceiling")
            if r is not None:
                any_ = True
                all_ok &= r >= GOAL_HIT_VS_CEILING
                parts.append(f"{scen} c={c}: {r:.2f}× (per CPU-s {eff_ratio(scen, c, 'gateway', 'ceiling'):.2f}×) "
                             f"{'✓' if r >= GOAL_HIT_VS_CEILING else '✗'}")
    if any_:
        checks.append((f"Hits ≥ {GOAL_HIT_VS_CEILING}× ceiling rps", "; ".join(parts), all_ok))
    parts, all_ok, any_ = [], True, False
    for scen in ("miss", "pass_post"):
        for c in d["conns"]:
            ga = paired(scen, c, "gateway", "direct", lambda x, y: x["p50_us"] - y["p50_us"])
            na = paired(scen, c, "nginx", "direct", lambda x, y: x["p50_us"] - y["p50_us"])
            if None not in (ga, na):
                any_ = True
                all_ok &= ga <= na
                parts.append(f"{scen} c={c}: gateway +{ms(ga)} ms vs nginx +{ms(na)} ms {'✓' if ga <= na else '✗'}")
    if any_:
        checks.append(("Misses / pass-through: added p50 over direct ≤ nginx's added p50", "; ".join(parts), all_ok))
    mem = d.get("memory")
    if mem and mem.get("points"):
        last = max(mem["points"], key=lambda p: p["users"])
        checks.append((
            f"{last['users']:,} users cached: ≤ {GOAL_OVERHEAD_BYTES} B overhead per entry",
            f"{last['overhead_per_entry']:.0f} B over the {mem['body_bytes']}-byte body",
            last["overhead_per_entry"] <= GOAL_OVERHEAD_BYTES,
        ))
    # The hyper floors are references, not under test: their errors are
    # flagged beside their rows instead.
    tested = [r for r in d["runs"] if not r["target"].startswith("floor_")]
    errs = sum(r["connect"] + r["read"] + r["write"] + r["timeout"] + r["status"] for r in tested)
    checks.append((
        "Zero errors (the servers under test)",
        f"{errs} socket errors / non-2xx in {len(tested)} runs"
        + ("" if d.get("complete") else " (run aborted)"),
        errs == 0 and bool(d.get("complete")),
    ))
    w("## Further checks")
    w("")
    w(
        "Earlier goals, kept as checks, paired and medianed the same way; *per CPU-s* is the same ratio "
        "of requests per CPU-second, which holds up better when other processes take CPU time."
    )
    w("")
    w("| check | measured (one run) | status |")
    w("|---|---|---|")
    for g, meas, ok in checks:
        w(f"| {g} | {meas} | {'**met**' if ok else '**not met**'} |")
    w("")

    # ---- pass-through per CPU-second
    pass_rows = []
    for scen, name in PASS_NAMES.items():
        for c in d["conns"]:
            for t in ("gateway", "gateway_before", "nginx"):
                rs = groups.get((scen, c, t))
                if not rs:
                    continue
                vs = eff_ratio(scen, c, t, "nginx") if t != "nginx" else None
                pass_rows.append(
                    f"| {name} | {c} | {TARGET_NAMES[t]} | {med([r['rps'] for r in rs]):,.0f} "
                    f"| {med([cpu_s(r) for r in rs]):.2f} | {med([eff(r) for r in rs]):,.0f} | {fmt_ratio(vs)} |"
                )
    if pass_rows:
        w("## Pass-through per CPU-second")
        w("")
        w(
            "Pinned one core each, as the hits. *server CPU-s*: CPU-seconds the server used during the "
            f"{d['duration_s']} s run (nginx: all its processes); *req per CPU-s* = requests / CPU-seconds, "
            "what the server costs per request whatever else ran on the machine; *vs nginx* is that figure's "
            "ratio to nginx's (per repeat, median)."
        )
        w("")
        w("| request | conns | server | req/s | server CPU-s | req per CPU-s | vs nginx (per CPU-s) |")
        w("|---|---:|---|---:|---:|---:|---:|")
        out.extend(pass_rows)
        w("")

    # ---- results
    w("## Results")
    w("")
    w(
        "Latencies in ms. *vs nginx* / *vs ceiling*: requests/s relative to that server in the same scenario. "
        "*req per CPU-s*: requests served per CPU-second the server used, the fairer figure when other "
        "processes took CPU time from the server core."
    )
    w("")
    flags = []
    for scen, title in SCENARIOS.items():
        conns = [c for c in d["conns"] if any(k[0] == scen and k[1] == c for k in groups)]
        if not conns:
            continue
        w(f"### {title}")
        w("")
        w("| conns | server | req/s | p50 | p99 | max | errors | non-2xx | server CPU | req per CPU-s | RSS MiB | vs nginx | vs ceiling | upstream reqs | wrk CPU |")
        w("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for c in conns:
            n_rps = stat(scen, c, "nginx", "rps")
            c_rps = stat(scen, c, "ceiling", "rps")
            for t in TARGETS:
                rs = groups.get((scen, c, t))
                if not rs:
                    continue
                rps = [r["rps"] for r in rs]
                e = sum(r["connect"] + r["read"] + r["write"] + r["timeout"] for r in rs)
                s = sum(r["status"] for r in rs)
                up = med([r["upstream_requests"] for r in rs]) if t != "direct" else None
                w(
                    f"| {c} | {TARGET_NAMES[t]} | {med(rps):,.0f} ({min(rps):,.0f}–{max(rps):,.0f}) "
                    f"| {ms(med([r['p50_us'] for r in rs]))} | {ms(med([r['p99_us'] for r in rs]))} "
                    f"| {ms(med([r['max_us'] for r in rs]))} | {e} | {s} "
                    f"| {med([r['server_cpu_pct'] for r in rs]):.0f}% "
                    f"| {med([eff(r) for r in rs]):,.0f} "
                    f"| {med([r['server_rss_kb'] for r in rs]) / 1024:.0f} "
                    f"| {fmt_ratio(ratio(med(rps), n_rps) if t != 'nginx' else None)} "
                    f"| {fmt_ratio(ratio(med(rps), c_rps) if not t.startswith('ceiling') else None)} "
                    f"| {'–' if up is None else f'{up:,.0f}'} "
                    f"| {med([r['wrk_cpu_pct'] for r in rs]):.0f}% |"
                )
                if scen.startswith("hit") and not t.startswith("ceiling") and up:
                    flags.append(f"{scen} c={c} {t}: {up:.0f} requests reached the upstream during hit runs")
                if t.startswith("floor_") and (e or s):
                    flags.append(f"{scen} c={c} {t}: {e} socket errors (wrk timeouts included), {s} non-2xx "
                                 "over its repeats; a reference, so the run went on")
                wt = rs[0].get("wrk_threads", 1)
                if med([r["wrk_cpu_pct"] for r in rs]) > 90 * wt:
                    flags.append(f"{scen} c={c} {t}: wrk used > 90% of "
                                 + ("its core" if wt == 1 else f"its {wt} threads' cores") + " (client-bound)")
        if scen in ("miss", "pass_post"):
            w("")
            for c in conns:
                dp = stat(scen, c, "direct", "p50_us")
                if dp is None:
                    continue
                bits = []
                for t in ("gateway", "nginx"):
                    p = stat(scen, c, t, "p50_us")
                    if p is not None:
                        bits.append(f"{TARGET_NAMES[t]} +{ms(p - dp)} ms")
                conns_opened = []
                for t in ("gateway", "nginx"):
                    rs = groups.get((scen, c, t)) or []
                    if rs and "upstream_connections" in rs[0]:
                        opened = [r["upstream_connections"] - (0 if r.get("upstream_connections_net") else 1) for r in rs]
                        conns_opened.append(f"{TARGET_NAMES[t]} {med(opened):,.0f}")
                w(
                    f"- c={c}: p50 added over upstream direct ({ms(dp)} ms): " + ", ".join(bits)
                    + (f"; upstream connections opened during the run: {', '.join(conns_opened)}" if conns_opened else "")
                )
        w("")
    if flags:
        w("Validity notes:")
        w("")
        for f in flags:
            w(f"- {f}")
        w("")

    # ---- memory
    if mem and mem.get("points"):
        w("## Memory: users cached")
        w("")
        w(
            "A separate gateway (same build, `max_entries` above the fill, TTL 3600 s) is filled through "
            "wrk with distinct ids (each a ~500-byte body from the fake upstream); RSS is VmRSS after "
            "`/metrics` ran the cache's pending maintenance. Baseline = RSS after serving 64 connections "
            "with one user cached. Overhead = (RSS − baseline) / entries − body size."
        )
        w("")
        w("| users cached | RSS MiB | baseline MiB | bytes / entry | overhead / entry (over the body) |")
        w("|---:|---:|---:|---:|---:|")
        for p in mem["points"]:
            w(
                f"| {p['entries']:,} | {p['rss_kb'] / 1024:,.0f} | {mem['baseline_rss_kb'] / 1024:,.0f} "
                f"| {p['bytes_per_entry']:,.0f} | {p['overhead_per_entry']:,.0f} (body {mem['body_bytes']} B) |"
            )
        ar = mem.get("after_reads")
        if ar:
            w(
                f"| {ar['entries']:,}, after {ar['reads']:,} reads over {ar['distinct_ids']:,} distinct cached ids "
                f"(the per-thread fronts filled) | {ar['rss_kb'] / 1024:,.0f} | {mem['baseline_rss_kb'] / 1024:,.0f} "
                f"| {ar['bytes_per_entry']:,.0f} | {ar['overhead_per_entry']:,.0f} (body {mem['body_bytes']} B) |"
            )
        w("")
        fl = mem.get("floor")
        if fl:
            n = fl["moka"]["entries"]
            w(
                f"Where the bytes go, in one process without a server (`examples/cache_floor.rs`: "
                "`cargo build --release --example cache_floor`, then "
                f"`target/release/examples/cache_floor MODE {n}`, one mode per process; {n:,} entries "
                "of the fake upstream's 484-byte body, the `gateway` modes storing a `Date` as a fill does; RSS "
                "growth per entry, with the gateway's allocator, mimalloc):"
            )
            w("")
            w("| mode | what is stored | bytes / entry over the body |")
            w("|---|---|---:|")
            rows = [
                ("bodies", "the bodies alone (`Vec<Bytes>`: the 32-byte handle + the allocator's size class)"),
                ("moka", "moka alone: `u128` keys, zero-size values, no expiry (its nodes, hash table, LRU deque, sketch)"),
                ("moka-sync", "the same with `moka::sync::Cache`"),
                ("moka-v8", "moka alone holding an 8-byte value inline (a thin pointer)"),
                ("moka-v32", "moka alone holding a 32-byte value inline (a `Bytes` handle)"),
                ("moka-ttl", "moka alone with a global `time_to_live` (a write-order deque node per entry)"),
                ("moka-expiry", "moka alone with per-entry expiry (`expire_after`: a timer wheel node per entry)"),
                ("moka-tti", "moka alone with a global `time_to_idle` (the access order it keeps anyway; the "
                             "gateway's choice)"),
                ("moka-body", "moka with per-entry expiry holding each body as a plain `Bytes` (no fields, "
                              "no `Date`): the floor for a moka cache of the upstream's bytes"),
                ("gateway", "the gateway's `UserCache` (moka + time-to-idle + a 16-byte boxed slice of the "
                            "fields, the `Date` and the body)"),
                ("filled", "`gateway`, each entry stored as a miss stores it (the fill's single flight)"),
                ("front", "`gateway`, then every id read twice on one thread: that thread's front holds its "
                          "full `SLOTS` copies"),
            ]
            for mode, what in rows:
                if mode in fl:
                    w(f"| `{mode}` | {what} | {fl[mode]['overhead']:,} |")
            w("")
            w(
                "What each change bought (issue 23, part 3; 1,000,000 users, mimalloc, B per user over the "
                "body). End to end, the 1M row above: 68fb635 564 (its build under `benches/load/run.sh` "
                "`MEMORY_ONLY=1 BIN_DIR=<its build>`) → the value as one `Bytes` over one exact-size "
                "allocation (its fields in front of the `Date` and body; 32 bytes inline in moka's entry, was "
                "64) 556 (b760ade's run of record) → the `Date` kept as 4 bytes of seconds instead of 29 of "
                "text 418 (`MEMORY_ONLY=1`) and 431 (d581233's run of record); 433 in this run, whose build "
                "also holds 65,536 write generation stripes (256 KiB per cache, a quarter of a byte per user "
                "here). The second step is mostly the allocator's "
                "size classes: 484 body bytes + 16 of fields + 29 of `Date` need the 640-byte class, + 4 of "
                "seconds fit the 512-byte one. A body a few bytes longer pays the 128 again: `cache_floor "
                "gateway` with a 488-byte body measures 411 without a `Date`, 525 with it as seconds and 537 "
                "as text (the edge is between 506 and 508 bytes of allocation, not at 512 as a bare `BytesMut` "
                "of 508 bytes in a `Vec` shows; not found why). Over all body sizes the `Date` change saves "
                "its 25 bytes on average. In one process: a 64-byte inline value 443 → one `Bytes` 412 (the "
                "488-byte body without `Date`). Then (45de80d measured 431 beside them, `MEMORY_ONLY=1`): "
                "moka holds the same bytes as a 16-byte boxed slice, not a 32-byte `Bytes` 381: moka clones "
                "each value on insert, and a clone of a `Bytes` over a `Vec` allocates a 24-byte shared "
                "counter, so the boxed slice saves that allocation as well as 16 bytes inline (`cache_floor "
                "gateway` 416 → 359) → moka's time-to-idle and each entry's end of life judged on read, "
                "instead of moka's per-entry expiry (`moka-expiry` − `moka-tti` = 44) 337 (`cache_floor "
                "gateway` 359 → 309). An entry nobody reads now stays until idle for the TTL plus the stale "
                "window the gateway started with, or until evicted for room, as nginx keeps a response "
                "until `inactive`. Measured on bare moka and not done: the sync cache buys nothing "
                "(`moka-sync` ≈ `moka`); an 8-byte value instead of the 16-byte boxed slice would need a "
                "thin pointer of our own, and its header in the body's allocation gives most of it back. "
                "What is left is moka's own entry (`moka`), which no value layout changes. The fronts at "
                "the fill above (each id asked once) hold nothing: only a moka hit copies an entry into a "
                "front; the row after the reads counts the copies they made. "
                "`front` − `gateway` is one worker's front at its full `SLOTS`, spread over these users."
            )
            w("")
    elif mem is None:
        w("## Memory")
        w("")
        w("Not measured in this run.")
        w("")

    prof = d.get("profile")
    if prof:
        w("## Profile: where the gateway's time goes")
        w("")
        if "error" in prof:
            failed(w, "perf", prof["error"])
        else:
            w(
                "`perf record -F 499 --call-graph dwarf -p <server>` for 6 s while wrk runs the scenario at "
                "64 connections (same setup as above). Self time is summed by crate / area and turned into "
                "CPU-µs per request with the server's CPU time and the requests wrk completed in the same "
                "6 s, so the gateway's profile can be set beside the server it is compared with. perf's "
                "sampling slows both sides a little."
            )
            w("")
            by = {}
            for key, p in prof.items():
                scen, _, target = key.partition("/")
                by.setdefault(scen, {})[target or "gateway"] = p
            for scen, targets in by.items():
                w(f"### {SCENARIOS.get(scen, scen)}")
                w("")
                names = list(targets)
                head = " | ".join(
                    f"{TARGET_NAMES.get(t, t)} µs/req | share" for t in names
                )
                w(f"| component (self time) | {head} |")
                w("|---|" + "---:|---:|" * len(names))
                us = {t: p.get("cpu_us_per_request") for t, p in targets.items()}
                comps = {}
                for t, p in targets.items():
                    for name, pct in p["components"]:
                        comps.setdefault(name, {})[t] = pct
                order = sorted(comps, key=lambda n: -max(comps[n].values()))
                for name in order:
                    if max(comps[name].values()) < 0.5:
                        continue
                    cells = []
                    for t in names:
                        pct = comps[name].get(t, 0.0)
                        cells.append(
                            (f"{us[t] * pct / 100:.2f}" if us[t] else "–") + f" | {pct:.1f}%"
                        )
                    w(f"| {name} | " + " | ".join(cells) + " |")
                total = " | ".join(
                    (f"**{us[t]:.2f}** | {targets[t].get('rps', 0):,.0f} rps" if us[t] else "– | –")
                    for t in names
                )
                w(f"| **total CPU per request** | {total} |")
                w("")
                for t in names:
                    p = targets[t]
                    w(f"<details><summary>{TARGET_NAMES.get(t, t)}: top symbols (self), and functions with callees</summary>")
                    w("")
                    w("```")
                    for pct, sym in p["self"]:
                        w(f"{pct:6.2f}%  {sym}")
                    if p.get("children"):
                        w("")
                        w("with callees / self:")
                        for tot, own, sym in p["children"]:
                            w(f"{tot:6.2f}% {own:6.2f}%  {sym}")
                    w("```")
                    w("")
                    w("</details>")
                    w("")
        w("")
    sysc = d.get("syscalls")
    if sysc:
        w("## System calls per request")
        w("")
        if "error" in sysc:
            failed(w, "perf stat", sysc["error"])
        else:
            w(
                "`perf stat -e raw_syscalls:sys_enter,context-switches,syscalls:sys_enter_*` on the server's "
                "processes (every thread) for 5 s while wrk runs the scenario at 64 connections, pinned as "
                "above; counts divided by the requests wrk completed in the same run. Counting tracepoints "
                "costs little, so each server batches as it does unobserved. Calls under 0.01 per request "
                "are left out."
            )
            w("")
            by = {}
            for key, r in sysc.items():
                scen, _, target = key.partition("/")
                by.setdefault(scen, {})[target] = r
            for scen, targets in by.items():
                names = list(targets)
                w(f"### {SCENARIOS.get(scen, scen)}")
                w("")
                w("| per request | " + " | ".join(TARGET_NAMES.get(t, t) for t in names) + " |")
                w("|---|" + "---:|" * len(names))
                w("| **system calls** | " + " | ".join(
                    f"**{targets[t]['syscalls_per_request']:.2f}**" for t in names) + " |")
                w("| context switches | " + " | ".join(
                    f"{targets[t]['context_switches_per_request']:.2f}" for t in names) + " |")
                calls = {}
                for t in names:
                    for c, v in targets[t]["by_call"].items():
                        calls.setdefault(c, {})[t] = v
                for c in sorted(calls, key=lambda c: -max(calls[c].values())):
                    w(f"| `{c}` | " + " | ".join(f"{calls[c].get(t, 0.0):.2f}" for t in names) + " |")
                w("| requests/s while counted | " + " | ".join(
                    f"{targets[t]['rps']:,.0f}" for t in names) + " |")
                w("")
        w("")
    w("Raw per-run numbers: `benches/load/results.json`.")
    w("")
    tail = kept_tail(dst)  # before open(dst, "w") empties it
    open(dst, "w").write("\n".join(out) + tail)


def failed(w, tool, error):
    """What a measuring tool printed when it failed, as a code block."""
    w(f"{tool} failed:")
    w("")
    w("```")
    w(error)
    w("```")


# Sections other benches write by hand (benches/budget) follow this line; a
# re-render keeps them.
KEEP_MARKER = "<!-- Below: written by hand, kept by benches/load/report.py. -->"


def kept_tail(dst):
    try:
        old = open(dst).read()
    except OSError:
        return ""
    i = old.find(KEEP_MARKER)
    return "" if i < 0 else "\n" + old[i:]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results")
    ap.add_argument("readme")
    ap.add_argument("--scaling", default=None, help="JSON file of the in-process thread-scaling bench")
    a = ap.parse_args()
    main(a.results, a.readme, a.scaling)
