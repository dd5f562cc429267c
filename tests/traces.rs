//! OpenTelemetry traces, end to end: the real binary (its logging and export setup
//! included) exports to a real OTLP/HTTP receiver (`traces/collector.rs`, decoding with
//! `opentelemetry-proto`), in front of the fake upstream. Each test asserts the span tree:
//! kinds, parents, the trace id carried on from the client's `traceparent`, the
//! `traceparent` the upstream saw, and the access line's `trace_id`. Every wait polls the
//! receiver or the log; none sleeps for a result.

mod support;

#[path = "traces/collector.rs"]
mod collector;

use std::time::{Duration, Instant};

use collector::{Collector, Got};
use http::{Method, StatusCode};
use serde_json::json;
use support::process::{GatewayProcess, TempDir};
use support::upstream::Fault;
use support::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
const USER: &str = "/v1/organization/users/user_abc";

/// A sampled client parent.
fn traceparent(trace: &str) -> String {
    format!("00-{trace}-{PARENT}-01")
}

/// The receiver, the fake upstream and the binary exporting to the receiver; `cache` is
/// added to `[cache]`.
struct Traced {
    /// The OTLP/HTTP receiver the gateway exports to.
    collector: Collector,
    /// The fake Admin API.
    upstream: Upstream,
    /// The binary, logging JSON to its captured stderr.
    gw: GatewayProcess,
    /// Its public listener.
    addr: std::net::SocketAddr,
    /// Holds its config file.
    _dir: TempDir,
}

async fn start(cache: &str, ttl_secs: u64) -> Traced {
    let collector = Collector::start(StatusCode::OK).await;
    let upstream = start_upstream().await;
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    cfg.ttl_secs = ttl_secs;
    let (addr, admin) = cfg.free_ports();
    cfg.extra = format!(
        "[telemetry]\notlp_endpoint = \"{}\"\nservice_name = \"gw-under-test\"\n",
        collector.endpoint()
    );
    let toml = cfg
        .toml()
        .replacen("[cache]\n", &format!("[cache]\n{cache}"), 1);
    let dir = TempDir::new("traces");
    let gw = GatewayProcess::spawn_json(&dir, &toml, "info", addr, admin).await;
    Traced {
        collector,
        upstream,
        gw,
        addr,
        _dir: dir,
    }
}

impl Traced {
    fn req(&self, method: Method, path: &str) -> support::client::Req {
        req(method, &format!("http://{}{path}", self.addr)).bearer(CLIENT_KEY)
    }

    /// The access line of the request answered with `request_id` (waits for it).
    async fn access_line(
        &mut self,
        request_id: &str,
    ) -> serde_json::Map<String, serde_json::Value> {
        let id = request_id.to_string();
        self.gw
            .wait_for_line(10, "access line", |l| {
                l.contains("openai_admin_gateway::access") && l.contains(&id)
            })
            .await;
        json_lines(&self.gw.stderr_text())
            .into_iter()
            .find(|l| {
                l.get("target").and_then(|t| t.as_str()) == Some("openai_admin_gateway::access")
                    && l.get("request_id").and_then(|t| t.as_str()) == Some(request_id)
            })
            .expect("access line")
    }
}

fn one<'a>(spans: &'a [Got], what: &str, pred: impl Fn(&Got) -> bool) -> &'a Got {
    let found: Vec<&Got> = spans.iter().filter(|g| pred(g)).collect();
    assert_eq!(found.len(), 1, "want one {what} span in {spans:#?}");
    found[0]
}

/// The `traceparent` the upstream got on its last request to `path`.
fn upstream_traceparent(upstream: &Upstream, path: &str) -> String {
    let r = upstream.last_request(path);
    let all: Vec<_> = r.headers.get_all("traceparent").iter().collect();
    assert_eq!(all.len(), 1, "one traceparent upstream: {:?}", r.headers);
    all[0].to_str().expect("ascii").to_string()
}

/// A hit: one SERVER span under the client's parent, in the client's trace, nothing else;
/// its access line carries that trace id.
#[tokio::test]
async fn a_hit_is_one_server_span_under_the_clients_parent() {
    let mut t = start("", 60).await;
    t.req(Method::GET, USER).send().await.assert_status(200);
    let hit = t
        .req(Method::GET, USER)
        .header("traceparent", &traceparent(TRACE))
        .header("tracestate", "vendor=1")
        .send()
        .await;
    hit.assert_status(200);
    assert!(hit.cache_status().contains("hit"), "{}", hit.describe());
    let spans = t
        .collector
        .wait_trace(TRACE, |s| s.iter().any(Got::is_server))
        .await;
    let server = one(&spans, "SERVER", Got::is_server);
    assert_eq!(server.parent_id(), PARENT);
    assert_eq!(server.service, "gw-under-test");
    assert_eq!(server.attr("http.request.method").as_deref(), Some("GET"));
    assert_eq!(server.attr("http.route").as_deref(), Some("get_user"));
    assert_eq!(
        server.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(server.attr("gateway.cache_status").as_deref(), Some("hit"));
    assert_eq!(
        server.attr("gateway.client").as_deref(),
        Some("test-client")
    );
    assert_eq!(
        server.attr("gateway.organization").as_deref(),
        Some("default")
    );
    assert_eq!(server.attr("url.path").as_deref(), Some(USER));
    assert_eq!(server.span.name, "GET get_user");
    // Nothing of the request's headers but the method and path: no key, no header value.
    for kv in &server.span.attributes {
        let v = format!("{:?}", kv.value);
        assert!(!v.contains(CLIENT_KEY) && !v.contains(ADMIN_KEY) && !v.contains("vendor=1"));
    }
    assert!(
        !spans.iter().any(Got::is_client),
        "a hit sends nothing upstream"
    );
    let line = t.access_line(&hit.request_id()).await;
    assert_eq!(line["trace_id"], TRACE, "{line:?}");
}

/// A miss: the SERVER span is a root (no client parent), its fill a CLIENT span under it,
/// and the upstream got a `traceparent` naming that CLIENT span. The access line carries
/// the exported trace id.
#[tokio::test]
async fn a_miss_has_its_fill_as_a_client_span_whose_traceparent_went_upstream() {
    let mut t = start("", 60).await;
    let miss = t.req(Method::GET, USER).send().await;
    miss.assert_status(200);
    let server = t
        .collector
        .wait_span("SERVER of the miss", |g| {
            g.is_server() && g.attr("url.path").as_deref() == Some(USER)
        })
        .await;
    assert_eq!(server.parent_id(), "", "no client parent: a root span");
    let trace = server.trace_id();
    let spans = t
        .collector
        .wait_trace(&trace, |s| s.iter().any(Got::is_client))
        .await;
    let client = one(&spans, "CLIENT", Got::is_client);
    assert_eq!(
        client.parent_id(),
        server.span_id(),
        "the fill is under the request"
    );
    assert_eq!(client.attr("http.request.method").as_deref(), Some("GET"));
    assert_eq!(
        client.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        upstream_traceparent(&t.upstream, USER),
        format!("00-{trace}-{}-01", client.span_id())
    );
    assert_eq!(
        server.attr("gateway.cache_status").as_deref(),
        Some("miss_stored")
    );
    let line = t.access_line(&miss.request_id()).await;
    assert_eq!(line["trace_id"], trace.as_str(), "{line:?}");
    // For the record (`--no-capture`): the trace as decoded, and its access line.
    for g in [&server, client] {
        let attrs: Vec<String> = g
            .span
            .attributes
            .iter()
            .map(|kv| format!("{}={}", kv.key, g.attr(&kv.key).unwrap_or_default()))
            .collect();
        println!(
            "{:?} {:?} trace={} span={} parent={} {}",
            g.span.kind(),
            g.span.name,
            g.trace_id(),
            g.span_id(),
            g.parent_id(),
            attrs.join(" ")
        );
    }
    println!(
        "upstream traceparent: {}",
        upstream_traceparent(&t.upstream, USER)
    );
    println!("access line: {}", serde_json::Value::Object(line));
}

/// A forward: the client's trace goes on through a CLIENT span, and the upstream sees that
/// span's `traceparent`, not the client's.
#[tokio::test]
async fn a_forward_is_a_client_span_under_the_server_span_in_the_clients_trace() {
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let t = start("", 60).await;
    let path = "/v1/organization/users?limit=2";
    t.req(Method::GET, path)
        .header("traceparent", &traceparent(trace))
        .send()
        .await
        .assert_status(200);
    let spans = t.collector.wait_trace(trace, |s| s.len() >= 2).await;
    let server = one(&spans, "SERVER", Got::is_server);
    let client = one(&spans, "CLIENT", Got::is_client);
    assert_eq!(server.parent_id(), PARENT);
    assert_eq!(client.parent_id(), server.span_id());
    assert_eq!(
        server.attr("url.path").as_deref(),
        Some("/v1/organization/users"),
        "no query"
    );
    assert_eq!(
        server.attr("gateway.cache_status").as_deref(),
        Some("bypass")
    );
    let sent = upstream_traceparent(&t.upstream, "/v1/organization/users");
    assert_eq!(sent, format!("00-{trace}-{}-01", client.span_id()));
    assert_ne!(
        sent,
        traceparent(trace),
        "the client's own traceparent is replaced"
    );
}

/// A write whose client hangs up while the upstream has it: the write's own task still
/// sends, and its CLIENT span is exported under the request's SERVER span (which says 499).
#[tokio::test]
async fn a_write_whose_client_hangs_up_keeps_its_client_span_under_the_request() {
    let trace = "1bf92f3577b34da6a3ce929d0e0e4731";
    let t = start("", 60).await;
    t.upstream
        .inject("POST", USER, Fault::new().apply_after_ms(500).times(1));
    let w = t
        .req(Method::POST, USER)
        .header("traceparent", &traceparent(trace))
        .json(&json!({"role": "reader"}));
    let client = tokio::spawn(w.send());
    t.upstream.wait_for_count("POST", USER, 1).await;
    client.abort();
    let _ = client.await;
    let spans = t
        .collector
        .wait_trace(trace, |s| {
            s.iter().any(Got::is_client) && s.iter().any(Got::is_server)
        })
        .await;
    let server = one(&spans, "SERVER", Got::is_server);
    let upstream = one(&spans, "CLIENT", Got::is_client);
    assert_eq!(server.parent_id(), PARENT);
    assert_eq!(upstream.parent_id(), server.span_id());
    assert_eq!(
        upstream.attr("http.request.method").as_deref(),
        Some("POST")
    );
    assert_eq!(
        upstream.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        server.attr("http.response.status_code").as_deref(),
        Some("499")
    );
    assert_eq!(
        upstream_traceparent(&t.upstream, USER),
        format!("00-{trace}-{}-01", upstream.span_id())
    );
}

/// A stale-while-revalidate answer: the SERVER span says so (an event), and the background
/// refresh is a CLIENT span under it.
#[tokio::test]
async fn a_stale_while_revalidate_refresh_is_a_client_span_under_the_request() {
    let trace = "2bf92f3577b34da6a3ce929d0e0e4732";
    let t = start("stale_while_revalidate_secs = 30\n", 1).await;
    t.req(Method::GET, USER).send().await.assert_status(200);
    // TTLs run on the cache's own clock: wait until the entry is past its TTL.
    let start = Instant::now();
    let stale = loop {
        let r = t
            .req(Method::GET, USER)
            .header("traceparent", &traceparent(trace))
            .send()
            .await;
        if r.cache_status().contains("ttl=-") {
            break r;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{}", r.describe());
        // Hits until the TTL passes; only the stale answer is in `trace` with a CLIENT span.
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stale.assert_status(200);
    let spans = t
        .collector
        .wait_trace(trace, |s| s.iter().any(Got::is_client))
        .await;
    let refresh = one(&spans, "CLIENT", Got::is_client);
    let server = spans
        .iter()
        .find(|g| g.is_server() && g.span_id() == refresh.parent_id())
        .unwrap_or_else(|| panic!("the refresh's parent is a SERVER span: {spans:#?}"));
    assert_eq!(server.parent_id(), PARENT);
    assert!(
        server.events().iter().any(|e| e == "stale_answer"),
        "{server:#?}"
    );
    assert_eq!(
        server.attr("gateway.cache_status").as_deref(),
        Some("stale_revalidate")
    );
}

/// A collector that refuses every batch: requests are answered as ever, and the failures
/// are counted.
#[tokio::test]
async fn export_failures_are_counted_and_cost_requests_nothing() {
    let collector = Collector::start(StatusCode::SERVICE_UNAVAILABLE).await;
    let upstream = start_upstream().await;
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    let (addr, admin) = cfg.free_ports();
    cfg.extra = format!(
        "[telemetry]\notlp_endpoint = \"{}\"\n",
        collector.endpoint()
    );
    let dir = TempDir::new("traces-refused");
    let _gw = GatewayProcess::spawn_json(&dir, &cfg.toml(), "info", addr, admin).await;
    let r = req(Method::GET, &format!("http://{addr}{USER}"))
        .bearer(CLIENT_KEY)
        .send()
        .await;
    r.assert_status(200);
    let metrics = format!("http://{admin}/metrics");
    let start = Instant::now();
    loop {
        let text = req(Method::GET, &metrics).send().await.text();
        if metric(&text, "gateway_trace_export_failures_total", &[]) >= 1.0 {
            assert_eq!(metric(&text, "gateway_trace_spans_dropped_total", &[]), 0.0);
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(collector.posts() >= 1);
}

/// Without `otlp_endpoint` nothing is exported, a forward passes the client's
/// `traceparent` on unchanged, and the access line carries the client's trace id.
#[tokio::test]
async fn without_an_endpoint_the_clients_traceparent_goes_on_and_names_the_access_line() {
    let trace = "3bf92f3577b34da6a3ce929d0e0e4733";
    let upstream = start_upstream().await;
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    let (addr, admin) = cfg.free_ports();
    let dir = TempDir::new("traces-off");
    let mut gw = GatewayProcess::spawn_json(&dir, &cfg.toml(), "info", addr, admin).await;
    let r = req(Method::GET, &format!("http://{addr}/v1/organization/users"))
        .bearer(CLIENT_KEY)
        .header("traceparent", &traceparent(trace))
        .send()
        .await;
    r.assert_status(200);
    assert_eq!(
        upstream_traceparent(&upstream, "/v1/organization/users"),
        traceparent(trace)
    );
    let id = r.request_id();
    gw.wait_for_line(10, "access line", |l| l.contains(&id))
        .await;
    let line = json_lines(&gw.stderr_text())
        .into_iter()
        .find(|l| l.get("request_id").and_then(|v| v.as_str()) == Some(id.as_str()))
        .expect("access line");
    assert_eq!(line["trace_id"], trace, "{line:?}");
    // A request without one has no trace id at all.
    let plain = req(Method::GET, &format!("http://{addr}/v1/organization/users"))
        .bearer(CLIENT_KEY)
        .send()
        .await;
    let id = plain.request_id();
    gw.wait_for_line(10, "access line", |l| l.contains(&id))
        .await;
    let line = json_lines(&gw.stderr_text())
        .into_iter()
        .find(|l| l.get("request_id").and_then(|v| v.as_str()) == Some(id.as_str()))
        .expect("access line");
    assert!(!line.contains_key("trace_id"), "{line:?}");
}
