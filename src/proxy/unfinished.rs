//! The guard of a user write's task: a write dropped before it ends (the
//! process stopped at the end of its grace period while the upstream still
//! had it, or the task panicked) still gets its eviction, here and on every
//! replica, and its audit line with the outcome unknown and status 504 (what
//! a client still waiting gets). It is treated as applied: the upstream may
//! apply it after the gateway stopped waiting.

use crate::org::Org;
use http::{Method, StatusCode};
use tracing::warn;

use super::access::audit;
use super::eviction::Eviction;
use super::Gateway;
use crate::metrics::ClientLabel;
use crate::telemetry::span::TraceId;

/// Armed while a write's task runs; [`Unfinished::finished`] disarms it.
pub(super) struct Unfinished {
    /// The gateway (cache, bus, request ids).
    gateway: Gateway,
    /// What the write evicts, once its plan is resolved (before it is
    /// sent; until then nothing was sent, so nothing to evict).
    pub(super) eviction: Eviction,
    /// The write's method, for the audit line.
    method: Method,
    /// The path for the audit line (`None`: not audited).
    audit_path: Option<String>,
    /// The client's name for the audit line.
    client: ClientLabel,
    /// The organization the write acts on (where it evicts).
    org: Org,
    /// The upstream's status, once it answered.
    pub(super) upstream_status: Option<StatusCode>,
    /// The write's trace id, for the audit line.
    pub(super) trace_id: TraceId,
    /// Cleared when the write ended on its own.
    armed: bool,
}

impl Unfinished {
    /// Arms the guard for a write by `client`.
    pub(super) fn new(
        gateway: &Gateway,
        method: &Method,
        audit_path: Option<&str>,
        client: &ClientLabel,
        org: &Org,
    ) -> Unfinished {
        Unfinished {
            gateway: gateway.clone(),
            eviction: Eviction::Nothing,
            method: method.clone(),
            audit_path: audit_path.map(str::to_owned),
            client: client.clone(),
            org: org.clone(),
            upstream_status: None,
            trace_id: TraceId::default(),
            armed: true,
        }
    }

    /// The write ended on its own: its task wrote the audit line and made
    /// the evictions itself.
    pub(super) fn finished(mut self) {
        self.armed = false;
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let shared = &*self.gateway.shared;
        match &self.eviction {
            Eviction::User(id, _) => {
                self.gateway.evicted_now(&self.org, id);
                shared
                    .metrics
                    .invalidation(crate::metrics::Invalidation::Write, self.org.name());
            }
            Eviction::All(_) => {
                self.gateway.org_evicted_now(&self.org);
                shared
                    .metrics
                    .invalidation(crate::metrics::Invalidation::WriteAll, self.org.name());
            }
            Eviction::Nothing => {}
        }
        warn!(
            method = %self.method,
            "a write was stopped before it ended (shutdown); its outcome is unknown, so it was evicted as if applied"
        );
        if let Some(path) = &self.audit_path {
            let request_id = shared.ids.next();
            let request_id = request_id.to_str().unwrap_or("-");
            audit(
                request_id,
                self.client.as_str(),
                self.org.name(),
                self.method.as_str(),
                path,
                self.upstream_status,
                StatusCode::GATEWAY_TIMEOUT.as_u16(),
                &self.eviction.audit(),
                self.trace_id,
            );
        }
    }
}
