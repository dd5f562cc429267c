//! The metrics every request writes, kept per thread ([`crate::per_thread`]) and
//! summed when scraped, as nginx's workers keep their own counters.
//!
//! A shared Prometheus counter is one cache line that every core writes on
//! every request, and a metric family adds a shared lock word on each
//! lookup. Here each thread counts into its own slot: gauges are plain
//! atomics, labelled counters and histograms sit behind the slot's own
//! (uncontended) mutex. The scrape walks every slot and encodes the sums
//! with `prometheus-client`'s encoder, so names, types and text format are
//! those of the other metrics.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use super::labels::{
    MethodLabel, OrgLabels, RequestLabels, RouteClass, RouteLabels, UpstreamLabels,
};
use super::org::{org_name, OrgSlot, ORG_SLOTS};
use super::{ClientLabel, UpstreamOutcome};
use crate::per_thread::PerThread;

/// One request counted in flight. Only [`Local::request_opened`] makes
/// one and only [`Local::request`] takes it, so every opened request is
/// counted exactly once (neither `Clone` nor `Copy`).
#[must_use = "a request opened must be counted by Metrics::request"]
#[derive(Debug)]
pub struct Opened(());

/// Upper bounds of every latency histogram's buckets: 50 µs doubling to
/// ~26 s (then +Inf). The one definition, for these per-thread histograms
/// and for the `prometheus-client` ones in `super`.
pub(super) const BOUNDS: [f64; 20] = {
    let mut b = [0.0; 20];
    let mut i = 0;
    let mut v = 0.000_05;
    while i < 20 {
        b[i] = v;
        v *= 2.0;
        i += 1;
    }
    b
};

/// One latency histogram's counts (not cumulative; the last is +Inf).
#[derive(Debug, Clone, Default)]
struct Buckets {
    counts: [u64; 21],
    sum: f64,
}

impl Buckets {
    fn observe(&mut self, secs: f64) {
        let i = BOUNDS.iter().position(|b| secs <= *b).unwrap_or(20);
        self.counts[i] += 1;
        self.sum += secs;
    }

    fn add(&mut self, other: &Buckets) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
        self.sum += other.sum;
    }

    fn encode(&self, mut m: prometheus_client::encoding::MetricEncoder<'_>) -> std::fmt::Result {
        let buckets: Vec<(f64, u64)> = BOUNDS
            .iter()
            .copied()
            .chain([f64::MAX])
            .zip(self.counts)
            .collect();
        let count = self.counts.iter().sum();
        m.encode_histogram::<NoLabelSet>(self.sum, count, &buckets, None)
    }
}

/// Route, method and status of an answered request.
type RequestKey = (RouteClass, MethodLabel, u16);

/// What one slot counted behind its mutex.
#[derive(Debug, Default)]
struct Counts {
    /// Answered requests by client, then (route, method, status).
    requests: HashMap<ClientLabel, Vec<(RequestKey, u64)>>,
    /// Time to response headers by route.
    durations: Vec<(RouteClass, Buckets)>,
    /// Upstream exchanges by outcome.
    upstream: Vec<((UpstreamOutcome, OrgSlot), u64)>,
    /// Upstream time to headers.
    upstream_duration: Buckets,
}

/// One slot.
#[derive(Debug, Default)]
struct Slot {
    counts: Mutex<Counts>,
    in_flight: AtomicI64,
    upstream_in_flight: AtomicI64,
    /// Hits by organization slot.
    cache_hits: [AtomicU64; ORG_SLOTS],
    /// Misses by organization slot.
    cache_misses: [AtomicU64; ORG_SLOTS],
}

impl Slot {
    fn counts(&self) -> MutexGuard<'_, Counts> {
        // A panic while counting leaves plain numbers behind: keep going.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Borrow<str> for ClientLabel {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

/// The per-thread metrics; cheap to clone (one shared set of slots).
#[derive(Debug, Clone, Default)]
pub(super) struct Local {
    slots: Arc<PerThread<Slot>>,
}

impl Local {
    fn slot(&self) -> &Slot {
        self.slots.local()
    }

    /// Counts one answered request and its time to headers, and lowers
    /// the in-flight gauge its [`Opened`] token raised.
    pub(super) fn request(
        &self,
        _opened: Opened,
        key: RequestKey,
        client: &ClientLabel,
        elapsed: Duration,
    ) {
        let slot = self.slot();
        let mut c = slot.counts();
        // Looked up by name: no clone of the label (its count is shared).
        match c.requests.get_mut(client.as_str()) {
            Some(v) => bump(v, key),
            None => {
                c.requests.insert(client.clone(), vec![(key, 1)]);
            }
        }
        let route = key.0;
        let secs = elapsed.as_secs_f64();
        match c.durations.iter_mut().find(|(r, _)| *r == route) {
            Some((_, b)) => b.observe(secs),
            None => {
                let mut b = Buckets::default();
                b.observe(secs);
                c.durations.push((route, b));
            }
        }
        slot.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// A request arrived: raises the in-flight gauge and returns the token
    /// that [`Local::request`] consumes to lower it.
    pub(super) fn request_opened(&self) -> Opened {
        self.slot().in_flight.fetch_add(1, Ordering::Relaxed);
        Opened(())
    }

    pub(super) fn upstream(&self, outcome: UpstreamOutcome, org: OrgSlot, elapsed: Duration) {
        let mut c = self.slot().counts();
        let key = (outcome, org);
        match c.upstream.iter_mut().find(|(o, _)| *o == key) {
            Some((_, n)) => *n += 1,
            None => c.upstream.push((key, 1)),
        }
        c.upstream_duration.observe(elapsed.as_secs_f64());
    }

    pub(super) fn upstream_in_flight(&self, delta: i64) {
        self.slot()
            .upstream_in_flight
            .fetch_add(delta, Ordering::Relaxed);
    }

    pub(super) fn cache_hit(&self, org: OrgSlot) {
        self.slot().cache_hits[org.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn cache_miss(&self, org: OrgSlot) {
        self.slot().cache_misses[org.index()].fetch_add(1, Ordering::Relaxed);
    }

    fn sum_i64(&self, f: impl Fn(&Slot) -> &AtomicI64) -> i64 {
        self.slots
            .iter()
            .map(|s| f(s).load(Ordering::Relaxed))
            .sum()
    }

    fn sum_u64(&self, f: impl Fn(&Slot) -> &AtomicU64) -> u64 {
        self.slots
            .iter()
            .map(|s| f(s).load(Ordering::Relaxed))
            .sum()
    }
}

fn bump(v: &mut Vec<(RequestKey, u64)>, key: RequestKey) {
    match v.iter_mut().find(|(k, _)| *k == key) {
        Some((_, n)) => *n += 1,
        None => v.push((key, 1)),
    }
}

/// What a scrape sums from every slot.
#[derive(Default)]
struct Totals {
    requests: HashMap<(RequestKey, ClientLabel), u64>,
    durations: HashMap<RouteClass, Buckets>,
    upstream: HashMap<(UpstreamOutcome, OrgSlot), u64>,
    upstream_duration: Buckets,
}

impl Local {
    fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for slot in self.slots.iter() {
            let c = slot.counts();
            for (client, v) in &c.requests {
                for (k, n) in v {
                    *t.requests.entry((*k, client.clone())).or_default() += n;
                }
            }
            for (route, b) in &c.durations {
                t.durations.entry(*route).or_default().add(b);
            }
            for (o, n) in &c.upstream {
                *t.upstream.entry(*o).or_default() += n;
            }
            t.upstream_duration.add(&c.upstream_duration);
        }
        t
    }
}

impl Collector for Local {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let t = self.totals();

        let mut requests: Vec<_> = t.requests.into_iter().collect();
        requests.sort_by(|(a, _), (b, _)| request_order(a).cmp(&request_order(b)));
        let mut m = encoder.encode_descriptor(
            "gateway_requests",
            "Requests answered, by route class, method, status and client",
            None,
            MetricType::Counter,
        )?;
        for (((route, method, status), client), n) in requests {
            let labels = RequestLabels {
                route,
                method,
                status,
                client,
            };
            ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
        }

        let mut durations: Vec<_> = t.durations.into_iter().collect();
        durations.sort_by_key(|(r, _)| r.as_str());
        let mut m = encoder.encode_descriptor(
            "gateway_request_duration_seconds",
            "Time from request to response headers",
            None,
            MetricType::Histogram,
        )?;
        for (route, b) in durations {
            b.encode(m.encode_family(&RouteLabels { route })?)?;
        }

        let gauge = |e: &mut DescriptorEncoder, name, help, v: i64| {
            ConstGauge::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
        };
        gauge(
            &mut encoder,
            "gateway_requests_in_flight",
            "Requests being handled now",
            self.sum_i64(|s| &s.in_flight),
        )?;
        // One series per organization named so far (bounded: see `org`).
        let named = super::org::named().max(1);
        let by_org =
            |e: &mut DescriptorEncoder, name, help, f: fn(&Slot) -> &[AtomicU64; ORG_SLOTS]| {
                let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
                for i in 0..ORG_SLOTS {
                    let n = self.sum_u64(|s| &f(s)[i]);
                    if i < named || n > 0 {
                        let org = org_name(i).to_string();
                        ConstCounter::new(n).encode(m.encode_family(&OrgLabels { org })?)?;
                    }
                }
                Ok::<_, std::fmt::Error>(())
            };
        by_org(
            &mut encoder,
            "gateway_cache_hits",
            "Retrieve-user requests answered from the cache, by org",
            |s| &s.cache_hits,
        )?;
        by_org(
            &mut encoder,
            "gateway_cache_misses",
            "Retrieve-user requests that fetched from the upstream, by org",
            |s| &s.cache_misses,
        )?;

        let mut upstream: Vec<_> = t.upstream.into_iter().collect();
        upstream.sort_by_key(|((o, org), _)| (outcome_order(*o), *org));
        let mut m = encoder.encode_descriptor(
            "gateway_upstream_requests",
            "Requests sent upstream, by upstream status (or error/timeout) and org",
            None,
            MetricType::Counter,
        )?;
        for ((status, org), n) in upstream {
            let org = org_name(org.index()).to_string();
            ConstCounter::new(n).encode(m.encode_family(&UpstreamLabels { status, org })?)?;
        }
        t.upstream_duration.encode(encoder.encode_descriptor(
            "gateway_upstream_duration_seconds",
            "Upstream time to response headers",
            None,
            MetricType::Histogram,
        )?)?;
        gauge(
            &mut encoder,
            "gateway_upstream_in_flight",
            "Upstream requests holding a concurrency slot",
            self.sum_i64(|s| &s.upstream_in_flight),
        )
    }
}

/// A stable order for the requests in the exposition: by the label texts.
fn request_order(
    ((route, method, status), client): &(RequestKey, ClientLabel),
) -> (&str, &str, u16, &str) {
    (route.as_str(), method.as_str(), *status, client.as_str())
}

/// A stable order for the upstream outcomes in the exposition.
fn outcome_order(o: UpstreamOutcome) -> (u8, u16) {
    match o {
        UpstreamOutcome::Status(s) => (0, s),
        UpstreamOutcome::Error => (1, 0),
        UpstreamOutcome::Timeout => (2, 0),
        UpstreamOutcome::ClientAborted => (3, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_prometheus_le() {
        let mut b = Buckets::default();
        b.observe(0.000_05); // exactly the first bound: le="5e-5"
        b.observe(0.000_06);
        b.observe(1e9);
        assert_eq!((b.counts[0], b.counts[1], b.counts[20]), (1, 1, 1));
    }

    #[test]
    fn counts_from_many_threads_add_up() {
        let local = Local::default();
        let dash = ClientLabel::new("dash");
        let org = super::super::org::org_slot("default");
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        let opened = local.request_opened();
                        let key = (RouteClass::GetUser, MethodLabel::Get, 200);
                        local.request(opened, key, &dash, Duration::ZERO);
                        local.cache_hit(org);
                    }
                });
            }
        });
        let t = local.totals();
        assert_eq!(
            t.requests[&((RouteClass::GetUser, MethodLabel::Get, 200), dash)],
            8000
        );
        assert_eq!(local.sum_u64(|s| &s.cache_hits[org.index()]), 8000);
        assert_eq!(local.sum_i64(|s| &s.in_flight), 0);
        assert_eq!(t.durations[&RouteClass::GetUser].counts[0], 8000);
    }
}
