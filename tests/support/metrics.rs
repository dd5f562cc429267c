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
