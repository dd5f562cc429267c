//! Reading the gateway's Prometheus metrics (the admin listener's `/metrics`; the in-process
//! gateway's text comes from `TestGateway::metrics_text`): [`metric`] sums the series whose
//! labels include some, [`Scrape`] reads one exact series and every label.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use http::Method;

use super::client::req;
use super::gateway::TestGateway;

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

// === Scrape: exact series ===

/// One sample line: `name{k="v",...} value`.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The series name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// One `/metrics` scrape, raw and parsed.
pub struct Scrape {
    /// The text as served.
    pub text: String,
    /// Every sample line, parsed.
    pub samples: Vec<Sample>,
}

impl Scrape {
    pub fn parse(text: String) -> Scrape {
        let samples = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| parse_sample(l).unwrap_or_else(|| panic!("unparsable sample line {l:?}")))
            .collect();
        Scrape { text, samples }
    }

    /// The value of the series `name` whose label set is exactly `labels` (0 when absent: a
    /// labelled counter appears only once something was counted).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.name == name && s.labels == want)
            .collect();
        assert!(
            found.len() <= 1,
            "{name}{labels:?} appears {} times:\n{}",
            found.len(),
            self.text
        );
        found.first().map_or(0.0, |s| s.value)
    }

    /// The sum of every series of `name`, whatever its labels.
    pub fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .sum()
    }

    /// Every sample of `name`.
    pub fn series(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }

    /// Fails the test unless `name` is present as a series (even at 0).
    #[track_caller]
    pub fn assert_present(&self, name: &str) {
        assert!(
            self.samples.iter().any(|s| s.name == name),
            "{name} missing from /metrics:\n{}",
            self.text
        );
    }
}

/// One sample line parsed (None if it is not one).
fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(after_brace) = rest.strip_prefix('{') {
        let mut chars = after_brace.char_indices().peekable();
        let mut end = None;
        loop {
            // `}` closes the set; `,` separates pairs.
            match chars.peek() {
                Some((i, '}')) => {
                    end = Some(*i + 1);
                    break;
                }
                Some((_, ',')) => {
                    chars.next();
                    continue;
                }
                None => break,
                _ => {}
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return None;
            }
            let mut value = String::new();
            let mut escaped = false;
            for (_, c) in chars.by_ref() {
                match (escaped, c) {
                    (true, 'n') => {
                        value.push('\n');
                        escaped = false;
                    }
                    (true, c) => {
                        value.push(c);
                        escaped = false;
                    }
                    (false, '\\') => escaped = true,
                    (false, '"') => break,
                    (false, c) => value.push(c),
                }
            }
            labels.insert(key, value);
        }
        rest = &after_brace[end?..];
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// `/metrics` of `gw`'s admin listener, parsed (fails the test unless it answers 200).
pub async fn scrape(gw: &TestGateway) -> Scrape {
    let resp = gw.admin(Method::GET, "/metrics").send().await;
    resp.assert_status(200);
    Scrape::parse(resp.text())
}

/// `after - before` of one exact series.
pub fn delta(before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.value(name, labels) - before.value(name, labels)
}

/// `after - before` of the sum over every series of `name`.
pub fn delta_sum(before: &Scrape, after: &Scrape, name: &str) -> f64 {
    after.sum(name) - before.sum(name)
}
