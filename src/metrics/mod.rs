//! Prometheus metrics, served on the admin listener.
//!
//! Labels are bounded: route class, method (known methods, else `OTHER`),
//! status code, client name (from config). Never user ids, paths or keys.
//! Every other label value is a closed enum (`labels`), so no caller can
//! add a series the enums do not list.
//!
//! What every request writes (requests, their latency, the in-flight
//! gauges, cache hits and misses, upstream exchanges) is counted per thread
//! and summed at scrape (`local`); the rest are plain `prometheus-client`
//! metrics, written rarely.

mod budget;
mod labels;
mod local;
mod org;
mod traces;

use std::time::Duration;

use http::{Method, StatusCode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use labels::{
    AuthFailureLabels, ClientLabels, DroppedLabels, EvictionLabels, InvalidationLabels,
    PhaseLabels, PublishLabels, RefreshLabels, ReloadLabels, StaleLabels,
};
pub use labels::{
    ClientLabel, DropReason, EvictionRule, Invalidation, MethodLabel, PublishResult, RefreshResult,
    ReloadResult, ReloadTrigger, RouteClass, StaleReason, TimeoutPhase, UpstreamOutcome,
    WriteOutcome,
};
pub use local::Opened;
use local::{Local, BOUNDS};
pub use org::{org_slot, OrgSlot, ORG_SLOTS};
use prometheus_client::registry::Registry;
pub use traces::{trace_export_failed, trace_span_dropped};

fn latency_histogram() -> Histogram {
    Histogram::new(BOUNDS)
}

/// All gateway metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    /// Owns every metric below, for encoding.
    registry: Registry,
    /// Written on every request: per thread, summed at scrape.
    local: Local,
    /// Users held in the cache, sampled at each scrape.
    cache_entries: Gauge,
    /// Users evicted here by writes and purges, by reason.
    cache_invalidations: Family<InvalidationLabels, Counter>,
    /// Upstream refusals of the admin key, by status (401 or 403).
    upstream_auth_failures: Family<AuthFailureLabels, Counter>,
    /// Requests refused with 429 by a client's rate limit, by client.
    rate_limited: Family<ClientLabels, Counter>,
    /// Configuration reloads, by result and trigger.
    reloads: Family<ReloadLabels, Counter>,
    /// Shared rate-limit checks that fell back to the local limiter.
    ratelimit_store_errors: Counter,
    /// Expired users served, by reason.
    stale_served: Family<StaleLabels, Counter>,
    /// Refetches of expired users, by result.
    refreshes: Family<RefreshLabels, Counter>,
    /// Upstream deadlines passed, by phase.
    upstream_timeouts: Family<PhaseLabels, Counter>,
    /// Attempts to publish an eviction to the other replicas, by result.
    invalidations_published: Family<PublishLabels, Counter>,
    /// Evictions received from other replicas and applied.
    invalidations_received: Counter,
    /// Time from an eviction on the sending replica to its apply here.
    invalidation_delay: Histogram,
    /// 1 while the invalidation bus subscription is live, else 0.
    bus_connected: Gauge,
    /// Replicas (this one included) heard on the bus within a second of
    /// the last message heard: what the organization's budget is divided
    /// by while Redis can not answer.
    replicas_live: Gauge,
    /// Caches emptied because the invalidation bus came back after a loss.
    cache_epoch_resets: Counter,
    /// Requests waiting for an upstream slot (written only off the fast
    /// path: a request that gets a slot at once never touches it).
    upstream_queued: Gauge,
    /// Evictions waiting to be published to the other replicas.
    invalidation_outbox: Gauge,
    /// Queued evictions given up, by reason (`expired`, `collapsed`).
    invalidations_dropped: Family<DroppedLabels, Counter>,
    /// Connections closed because a response made no progress to the
    /// client for `server.send_timeout_ms`.
    send_timeouts: Counter,
    /// Writes that evicted cached users, by dependency-table rule and
    /// outcome (`applied`, `unknown`).
    write_evictions: Family<EvictionLabels, Counter>,
    /// The organization's budget (`gateway_budget_*`).
    budget: budget::BudgetMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut m = Metrics {
            cache_entries: Gauge::default(),
            cache_invalidations: Family::default(),
            upstream_auth_failures: Family::default(),
            rate_limited: Family::default(),
            reloads: Family::default(),
            ratelimit_store_errors: Counter::default(),
            stale_served: Family::default(),
            refreshes: Family::default(),
            upstream_timeouts: Family::default(),
            invalidations_published: Family::default(),
            invalidations_received: Counter::default(),
            invalidation_delay: latency_histogram(),
            bus_connected: Gauge::default(),
            replicas_live: Gauge::default(),
            cache_epoch_resets: Counter::default(),
            upstream_queued: Gauge::default(),
            invalidation_outbox: Gauge::default(),
            invalidations_dropped: Family::default(),
            send_timeouts: Counter::default(),
            write_evictions: Family::default(),
            budget: budget::BudgetMetrics::register(&mut Registry::default()),
            registry: Registry::default(),
            local: Local::default(),
        };
        let r = &mut m.registry;
        r.register_collector(Box::new(m.local.clone()));
        traces::register(r);
        r.register(
            "gateway_cache_entries",
            "Users held in the cache (approximate)",
            m.cache_entries.clone(),
        );
        r.register(
            "gateway_cache_invalidations",
            "Cache evictions caused by writes and purges",
            m.cache_invalidations.clone(),
        );
        r.register(
            "gateway_upstream_auth_failures",
            "Upstream refusals of the admin key (a 401, or a 403 naming the key), by upstream status",
            m.upstream_auth_failures.clone(),
        );
        // Both series exist from the start, so an alert on their rate sees
        // the first failure.
        for status in [401, 403] {
            let _series = m
                .upstream_auth_failures
                .get_or_create(&AuthFailureLabels { status });
        }
        r.register(
            "gateway_rate_limited",
            "Requests refused with 429 by a client's rate limit",
            m.rate_limited.clone(),
        );
        r.register(
            "gateway_config_reloads",
            "Configuration reloads, by result",
            m.reloads.clone(),
        );
        r.register(
            "gateway_ratelimit_store_errors",
            "Shared rate-limit checks that fell back to the local limiter (Redis down or slow)",
            m.ratelimit_store_errors.clone(),
        );
        r.register(
            "gateway_cache_stale_served",
            "Expired users served: the refetch failed (error) or a background refresh runs (revalidate)",
            m.stale_served.clone(),
        );
        r.register(
            "gateway_cache_refreshes",
            "Refetches of expired users, by result (ok, error, gone, unstorable)",
            m.refreshes.clone(),
        );
        r.register(
            "gateway_upstream_timeouts",
            "Upstream deadlines passed: waiting for headers, or for a body (fill, buffered or idle)",
            m.upstream_timeouts.clone(),
        );
        for &phase in TimeoutPhase::ALL {
            let _series = m.upstream_timeouts.get_or_create(&PhaseLabels { phase });
        }
        r.register(
            "gateway_invalidations_published",
            "Attempts to publish an eviction to the other replicas, by result (ok, error, timeout); failed ones are retried",
            m.invalidations_published.clone(),
        );
        r.register(
            "gateway_invalidations_received",
            "Evictions received from other replicas and applied",
            m.invalidations_received.clone(),
        );
        r.register(
            "gateway_invalidation_delay_seconds",
            "Eviction on the sending replica to apply here (outbox wait included; wall clocks)",
            m.invalidation_delay.clone(),
        );
        r.register(
            "gateway_invalidation_bus_connected",
            "1 while the invalidation bus subscription is live (hits are served), else 0",
            m.bus_connected.clone(),
        );
        r.register(
            "gateway_replicas_live",
            "Replicas (this one included) heard on the invalidation bus within a second of the last message heard; while Redis is away each takes this share of the upstream budget",
            m.replicas_live.clone(),
        );
        r.register(
            "gateway_write_evictions",
            "Writes that evicted cached users, by dependency rule (user_path, user_body; all, all_unlisted and all_body_unread empty the cache, so each costs a refill) and outcome (applied, unknown)",
            m.write_evictions.clone(),
        );
        r.register(
            "gateway_cache_epoch_resets",
            "Caches emptied because the invalidation bus came back after a loss",
            m.cache_epoch_resets.clone(),
        );
        r.register(
            "gateway_upstream_queued",
            "Requests waiting for an upstream concurrency slot",
            m.upstream_queued.clone(),
        );
        r.register(
            "gateway_invalidation_outbox",
            "Evictions waiting to be published to the other replicas (queued or being sent)",
            m.invalidation_outbox.clone(),
        );
        r.register(
            "gateway_invalidation_outbox_dropped",
            "Queued evictions given up: expired (every copy they evict has expired) or collapsed (the outbox was full: replaced by one evict-all)",
            m.invalidations_dropped.clone(),
        );
        r.register(
            "gateway_send_timeouts",
            "Connections closed because a response made no progress to the client for \
             server.send_timeout_ms",
            m.send_timeouts.clone(),
        );
        m.budget = budget::BudgetMetrics::register(r);
        m
    }

    /// Counts a connection closed for `server.send_timeout_ms`.
    pub fn send_timeout(&self) {
        self.send_timeouts.inc();
    }

    /// Sets the number of evictions waiting to be published.
    pub fn invalidation_outbox(&self, waiting: usize) {
        self.invalidation_outbox.set(waiting as i64);
    }

    /// Counts queued evictions given up (`expired`) or folded into one
    /// evict-all (`collapsed`).
    pub fn invalidations_dropped(&self, reason: DropReason, n: usize) {
        self.invalidations_dropped
            .get_or_create(&DroppedLabels { reason })
            .inc_by(n as u64);
    }

    /// Counts an attempt to publish an eviction (`ok`, `error`, `timeout`).
    pub fn invalidation_published(&self, result: PublishResult) {
        self.invalidations_published
            .get_or_create(&PublishLabels { result })
            .inc();
    }

    /// Counts an eviction received from another replica, `delay` after it
    /// was published.
    pub fn invalidation_received(&self, delay: Duration) {
        self.invalidations_received.inc();
        self.invalidation_delay.observe(delay.as_secs_f64());
    }

    /// Sets the bus gauge.
    pub fn bus_connected(&self, connected: bool) {
        self.bus_connected.set(i64::from(connected));
    }

    /// Sets the live replicas gauge.
    pub fn replicas_live(&self, replicas: usize) {
        self.replicas_live
            .set(i64::try_from(replicas).unwrap_or(i64::MAX));
    }

    /// Counts an epoch reset.
    pub fn cache_epoch_reset(&self) {
        self.cache_epoch_resets.inc();
    }

    /// Counts an expired user served (`error` or `revalidate`).
    pub fn stale_served(&self, reason: StaleReason) {
        self.stale_served
            .get_or_create(&StaleLabels { reason })
            .inc();
    }

    /// Counts a refetch of an expired user (`ok`, `error`, `gone`, `unstorable`).
    pub fn refresh(&self, result: RefreshResult) {
        self.refreshes
            .get_or_create(&RefreshLabels { result })
            .inc();
    }

    /// Counts a passed upstream deadline (`headers` or `body`).
    pub fn upstream_timeout(&self, phase: TimeoutPhase) {
        self.upstream_timeouts
            .get_or_create(&PhaseLabels { phase })
            .inc();
    }

    /// Counts one answered request, and lowers the in-flight gauge
    /// [`Metrics::request_opened`] raised (its token is consumed here).
    pub fn request(
        &self,
        opened: Opened,
        route: RouteClass,
        method: &Method,
        status: StatusCode,
        client: &ClientLabel,
        elapsed: Duration,
    ) {
        self.local.request(
            opened,
            (route, MethodLabel::of(method), status.as_u16()),
            client,
            elapsed,
        );
    }

    /// Raises the in-flight gauge for a request that arrived; the token
    /// goes back to [`Metrics::request`] when the request is counted.
    pub fn request_opened(&self) -> Opened {
        self.local.request_opened()
    }

    /// Counts a cache hit in the organization of `org`.
    pub fn cache_hit(&self, org: OrgSlot) {
        self.local.cache_hit(org);
    }

    /// Counts a cache miss in the organization of `org`.
    pub fn cache_miss(&self, org: OrgSlot) {
        self.local.cache_miss(org);
    }

    /// Counts a write's eviction by the kind of rule that matched and the
    /// write's outcome (the `all*` rules each cost a refill of the cache).
    pub fn write_eviction(&self, rule: EvictionRule, outcome: WriteOutcome) {
        self.write_evictions
            .get_or_create(&EvictionLabels { rule, outcome })
            .inc();
    }

    /// Counts an invalidation (`write`, `write_all`, `purge`, `purge_all`)
    /// in the organization called `org` (`*`: every organization).
    pub fn invalidation(&self, reason: Invalidation, org: &str) {
        let org = org.to_owned();
        self.cache_invalidations
            .get_or_create(&InvalidationLabels { reason, org })
            .inc();
    }

    /// Counts one upstream exchange for the organization of `org`.
    pub fn upstream(&self, outcome: UpstreamOutcome, org: OrgSlot, elapsed: Duration) {
        self.local.upstream(outcome, org, elapsed);
    }

    /// Moves the upstream in-flight gauge by `delta` (+1 or -1).
    pub fn upstream_in_flight(&self, delta: i64) {
        self.local.upstream_in_flight(delta);
    }

    /// Moves the upstream queue gauge by `delta` (+1 or -1); only
    /// `upstream::queue::QueuePlace` does, so it reads 0 when idle.
    pub fn upstream_queued(&self, delta: i64) {
        self.upstream_queued.inc_by(delta);
    }

    /// Counts an upstream refusal of the admin key; `status` is 401 or 403
    /// (anything else is counted as 403, keeping the label bounded).
    pub fn upstream_auth_failure(&self, status: u16) {
        let status = if status == 401 { 401 } else { 403 };
        self.upstream_auth_failures
            .get_or_create(&AuthFailureLabels { status })
            .inc();
    }

    /// Counts a 429 given to `client`.
    pub fn rate_limited(&self, client: &ClientLabel) {
        self.rate_limited
            .get_or_create(&ClientLabels {
                client: client.clone(),
            })
            .inc();
    }

    /// Counts a shared rate-limit check that Redis did not answer.
    pub fn ratelimit_store_error(&self) {
        self.ratelimit_store_errors.inc();
    }

    /// Counts a reload (`ok` or `error`; `signal` or `file`).
    pub fn reload(&self, result: ReloadResult, trigger: ReloadTrigger) {
        self.reloads
            .get_or_create(&ReloadLabels { result, trigger })
            .inc();
    }

    /// Prometheus text exposition, with the cache size sampled now.
    pub fn encode(&self, cache_entries: u64) -> String {
        self.cache_entries.set(cache_entries as i64);
        let mut out = String::with_capacity(8192);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contract() {
        let m = Metrics::new();
        let opened = m.request_opened();
        m.request(
            opened,
            RouteClass::GetUser,
            &Method::GET,
            StatusCode::OK,
            &ClientLabel::new("dash"),
            Duration::from_millis(1),
        );
        let org = org_slot("research");
        m.cache_hit(org);
        m.cache_miss(org);
        m.upstream(UpstreamOutcome::Status(200), org, Duration::from_millis(3));
        m.upstream(UpstreamOutcome::Timeout, org, Duration::from_millis(3));
        m.invalidation(Invalidation::Purge, "research");
        m.upstream_auth_failure(401);
        m.upstream_auth_failure(401);
        m.upstream_auth_failure(999);
        let text = m.encode(7);
        for needle in [
            "gateway_requests_total{route=\"get_user\",method=\"GET\",status=\"200\",client=\"dash\"} 1",
            "gateway_request_duration_seconds_bucket",
            "gateway_cache_hits_total{org=\"research\"} 1",
            "gateway_cache_misses_total{org=\"research\"} 1",
            "gateway_cache_entries 7",
            "gateway_upstream_requests_total{status=\"200\",org=\"research\"} 1",
            "gateway_upstream_requests_total{status=\"timeout\",org=\"research\"} 1",
            "gateway_cache_invalidations_total{reason=\"purge\",org=\"research\"} 1",
            "gateway_upstream_duration_seconds_count 2",
            "gateway_upstream_auth_failures_total{status=\"401\"} 2",
            "gateway_upstream_auth_failures_total{status=\"403\"} 1",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }

    /// The `le` bounds of one histogram family in `text`.
    fn bounds_of<'a>(text: &'a str, family: &str) -> Vec<&'a str> {
        let prefix = format!("{family}_bucket{{");
        text.lines()
            .filter(|l| l.starts_with(&prefix))
            .filter_map(|l| l.split("le=\"").nth(1)?.split('"').next())
            .collect()
    }

    #[test]
    fn per_thread_and_shared_histograms_have_the_same_buckets() {
        let m = Metrics::new();
        let opened = m.request_opened();
        let client = ClientLabel::new("dash");
        let ms = Duration::from_millis(1);
        m.request(
            opened,
            RouteClass::GetUser,
            &Method::GET,
            StatusCode::OK,
            &client,
            ms,
        );
        m.upstream(UpstreamOutcome::Status(200), org_slot("default"), ms);
        m.invalidation_received(ms);
        let text = m.encode(0);
        let shared = bounds_of(&text, "gateway_invalidation_delay_seconds");
        assert_eq!(shared.len(), BOUNDS.len() + 1, "{text}");
        for local in [
            "gateway_request_duration_seconds",
            "gateway_upstream_duration_seconds",
        ] {
            assert_eq!(bounds_of(&text, local), shared, "{text}");
        }
    }
}
