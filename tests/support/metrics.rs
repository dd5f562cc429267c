//! Reading the gateway's Prometheus metrics (the admin listener's `/metrics`; the in-process
//! gateway's text comes from `TestGateway::metrics_text`).

use std::net::SocketAddr;

use http::Method;

use super::client::req;

/// Sum of every sample of `name` in Prometheus text whose labels include all of `labels`
/// (0 when there is none). `name` is the full series name, e.g. `gateway_rate_limited_total`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_text, value) = if let Some(inner) = rest.strip_prefix('{') {
            match inner.split_once('}') {
                Some((l, v)) => (l, v),
                None => continue,
            }
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            continue;
        };
        let all = labels
            .iter()
            .all(|(k, v)| label_text.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
        if !all {
            continue;
        }
        let v = value.split_whitespace().next().unwrap_or("");
        sum += v
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("unparsable sample {line:?}"));
    }
    sum
}

/// `gateway_config_reloads_total{result}` scraped from the admin listener at `admin`.
pub async fn config_reloads(admin: SocketAddr, result: &str) -> f64 {
    let resp = req(Method::GET, &format!("http://{admin}/metrics"))
        .send()
        .await;
    resp.assert_status(200);
    metric(
        &resp.text(),
        "gateway_config_reloads_total",
        &[("result", result)],
    )
}

/// Polls `/metrics` on the admin listener at `admin` (for up to 5 s) until
/// `gateway_requests_in_flight`, `gateway_upstream_in_flight` and `gateway_upstream_queued` all read 0: every request's
/// account was settled (accounts settle when response bodies drop, a moment after the client
/// has read them). `what` names the situation in the failure message.
pub async fn assert_settled(admin: SocketAddr, what: &str) {
    let url = format!("http://{admin}/metrics");
    let start = std::time::Instant::now();
    loop {
        let resp = req(Method::GET, &url).send().await;
        resp.assert_status(200);
        let text = resp.text();
        let requests = metric(&text, "gateway_requests_in_flight", &[]);
        let upstream = metric(&text, "gateway_upstream_in_flight", &[]);
        let queued = metric(&text, "gateway_upstream_queued", &[]);
        if requests == 0.0 && upstream == 0.0 && queued == 0.0 {
            return;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "{what}: in-flight gauges still at requests={requests} upstream={upstream} queued={queued}:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
