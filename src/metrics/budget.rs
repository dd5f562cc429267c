//! The organization's budget's metrics (`gateway_budget_*`): how long
//! requests waited for a turn, who was refused one, the pauses after an
//! upstream 429, and the turns left.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::labels::{ClientLabel, ClientLabels};
use super::local::BOUNDS;

/// The `gateway_budget_*` families.
#[derive(Debug)]
pub(super) struct BudgetMetrics {
    /// Time a request waited for its turn (0 for a turn taken at once).
    wait: Histogram,
    /// Requests refused a turn (429 `organization_budget_exceeded`), by client.
    refusals: Family<ClientLabels, Counter>,
    /// Pauses started or extended by an upstream 429.
    pauses: Counter,
    /// Seconds of pause (each pause counts the time it added).
    paused_seconds: Counter<f64, AtomicU64>,
    /// Turns left in the burst at the last turn taken.
    remaining: Gauge,
    /// Requests waiting for a turn now (one per live `budget::Place`).
    queued: Gauge,
}

impl BudgetMetrics {
    /// The families, registered in `r`.
    pub(super) fn register(r: &mut Registry) -> Self {
        let m = Self {
            wait: Histogram::new(BOUNDS),
            refusals: Family::default(),
            pauses: Counter::default(),
            paused_seconds: Counter::default(),
            remaining: Gauge::default(),
            queued: Gauge::default(),
        };
        r.register(
            "gateway_budget_wait_seconds",
            "Time requests waited for a turn of the upstream budget, upstream.rate_limit or a pause (0 when taken at once)",
            m.wait.clone(),
        );
        r.register(
            "gateway_budget_refusals",
            "Requests refused a turn of the upstream budget (the gateway answered 429), by client",
            m.refusals.clone(),
        );
        r.register(
            "gateway_budget_pauses",
            "Pauses of all upstream traffic started or extended by an upstream 429",
            m.pauses.clone(),
        );
        r.register(
            "gateway_budget_paused_seconds",
            "Seconds all upstream traffic was paused after upstream 429s",
            m.paused_seconds.clone(),
        );
        r.register(
            "gateway_budget_remaining",
            "Turns left in the upstream budget at the last turn taken (0 without upstream.rate_limit)",
            m.remaining.clone(),
        );
        r.register(
            "gateway_budget_queued",
            "Requests waiting for a turn of the upstream budget",
            m.queued.clone(),
        );
        m
    }
}

impl super::Metrics {
    /// Records a turn taken after `waited`, with `remaining` turns left.
    pub fn budget_turn(&self, waited: Duration, remaining: Option<u32>) {
        self.budget.wait.observe(waited.as_secs_f64());
        if let Some(r) = remaining {
            self.budget.remaining.set(i64::from(r));
        }
    }

    /// Sets the turns left after a turn taken without a wait's record
    /// (the driver's).
    pub fn budget_turn_left(&self, remaining: u32) {
        self.budget.remaining.set(i64::from(remaining));
    }

    /// Counts a turn refused to `client` after `waited`.
    pub fn budget_refused(&self, client: &ClientLabel, waited: Duration) {
        self.budget.wait.observe(waited.as_secs_f64());
        self.budget
            .refusals
            .get_or_create(&ClientLabels {
                client: client.clone(),
            })
            .inc();
    }

    /// A request started (1) or stopped (-1) waiting for a turn.
    pub fn budget_queued(&self, delta: i64) {
        self.budget.queued.inc_by(delta);
    }

    /// Counts a pause that added `added` to the organization's pause.
    pub fn budget_paused(&self, added: Duration) {
        self.budget.pauses.inc();
        self.budget.paused_seconds.inc_by(added.as_secs_f64());
    }
}
