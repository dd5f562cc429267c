//! The label values of every metric, as closed enums: a label can only
//! take a value listed here, so each family's cardinality is bounded by
//! its type (client names are bounded by the config, status codes by
//! HTTP). Each value's text is what the exposition, the dashboards and
//! the alerts read; it never changes.

use std::fmt::Write as _;
use std::sync::Arc;

use http::Method;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

/// Declares a closed label enum: its variants, each value's text
/// (`as_str`), every value in order (`ALL`), and its encoding.
macro_rules! label_enum {
    (
        $(#[$meta:meta])*
        $name:ident {
            $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in the order declared.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
                encoder.write_str(self.as_str())
            }
        }
    };
}

/// A client's name as a metric label (cheap to clone).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientLabel(Arc<str>);

impl ClientLabel {
    /// Wraps a configured client name.
    pub fn new(name: &str) -> Self {
        Self(name.into())
    }

    /// The label for requests that never authenticated.
    pub fn anonymous() -> Self {
        Self("-".into())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl EncodeLabelValue for ClientLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(&self.0)
    }
}

/// Outcome of one upstream exchange, as the `status` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamOutcome {
    /// The upstream answered with this status.
    Status(u16),
    /// Connection or protocol failure.
    Error,
    /// No response headers within the timeout.
    Timeout,
    /// The client's request body broke mid-exchange (the client's fault).
    ClientAborted,
}

impl EncodeLabelValue for UpstreamOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        match self {
            Self::Status(s) => write!(encoder, "{s}"),
            Self::Error => encoder.write_str("error"),
            Self::Timeout => encoder.write_str("timeout"),
            Self::ClientAborted => encoder.write_str("client_aborted"),
        }
    }
}

label_enum! {
    /// The route class label used in logs and metrics (bounded set).
    RouteClass {
        /// The cached retrieve-user route.
        GetUser => "get_user",
        /// A write that evicts cached users.
        UserWrite => "user_write",
        /// Plain forwarding (including `GetUserUncached`).
        Forward => "forward",
        /// Rejected before routing (outside prefix, bad path).
        Rejected => "rejected",
    }
}

label_enum! {
    /// A request's method (`gateway_requests{method}`): the known ones,
    /// else `OTHER`.
    MethodLabel {
        /// GET.
        Get => "GET",
        /// POST.
        Post => "POST",
        /// PUT.
        Put => "PUT",
        /// PATCH.
        Patch => "PATCH",
        /// DELETE.
        Delete => "DELETE",
        /// HEAD.
        Head => "HEAD",
        /// OPTIONS.
        Options => "OPTIONS",
        /// Any other method.
        Other => "OTHER",
    }
}

impl MethodLabel {
    /// The label of `m`.
    pub fn of(m: &Method) -> Self {
        match *m {
            Method::GET => Self::Get,
            Method::POST => Self::Post,
            Method::PUT => Self::Put,
            Method::PATCH => Self::Patch,
            Method::DELETE => Self::Delete,
            Method::HEAD => Self::Head,
            Method::OPTIONS => Self::Options,
            _ => Self::Other,
        }
    }
}

label_enum! {
    /// Why users were evicted here (`gateway_cache_invalidations{reason}`).
    Invalidation {
        /// A write named one user.
        Write => "write",
        /// A write emptied the cache.
        WriteAll => "write_all",
        /// An admin purge of one user.
        Purge => "purge",
        /// An admin purge of every user.
        PurgeAll => "purge_all",
    }
}

label_enum! {
    /// Why an expired user was served (`gateway_cache_stale_served{reason}`).
    StaleReason {
        /// The refetch failed, within `stale_if_error`.
        Error => "error",
        /// Within `stale_while_revalidate`: a background refresh runs.
        Revalidate => "revalidate",
    }
}

label_enum! {
    /// How a refetch of an expired user ended
    /// (`gateway_cache_refreshes{result}`).
    RefreshResult {
        /// The user was fetched and stored.
        Ok => "ok",
        /// No answer, or a failure status.
        Error => "error",
        /// The user is gone upstream.
        Gone => "gone",
        /// An answer that can not be stored.
        Unstorable => "unstorable",
    }
}

label_enum! {
    /// Which upstream deadline passed (`gateway_upstream_timeouts{phase}`).
    TimeoutPhase {
        /// Waiting for the response headers.
        Headers => "headers",
        /// Waiting for the body (fill, buffered or idle).
        Body => "body",
    }
}

label_enum! {
    /// How an attempt to publish an eviction ended
    /// (`gateway_invalidations_published{result}`).
    PublishResult {
        /// Redis took it.
        Ok => "ok",
        /// Redis refused it or the connection failed.
        Error => "error",
        /// No answer within `redis.timeout_ms`.
        Timeout => "timeout",
    }
}

label_enum! {
    /// Why queued evictions were given up
    /// (`gateway_invalidation_outbox_dropped{reason}`).
    DropReason {
        /// Every copy they evict has expired.
        Expired => "expired",
        /// The outbox was full: replaced by one evict-all.
        Collapsed => "collapsed",
    }
}

label_enum! {
    /// Which kind of row of the dependency table matched a write
    /// (`gateway_write_evictions{rule}`).
    EvictionRule {
        /// The user id in the path.
        UserPath => "user_path",
        /// The `user_id` of the JSON body.
        UserBody => "user_body",
        /// A row that evicts every user.
        All => "all",
        /// A write no row names, where users live: every user.
        AllUnlisted => "all_unlisted",
        /// A body rule whose body could not be read: every user.
        AllBodyUnread => "all_body_unread",
    }
}

label_enum! {
    /// How a write that evicted ended (`gateway_write_evictions{outcome}`).
    WriteOutcome {
        /// 2xx.
        Applied => "applied",
        /// No answer, broken off, or 5xx: it may apply later.
        Unknown => "unknown",
    }
}

label_enum! {
    /// How a reload ended (`gateway_config_reloads{result}`).
    ReloadResult {
        /// Applied.
        Ok => "ok",
        /// Refused; the running config stays.
        Error => "error",
    }
}

label_enum! {
    /// What asked for a reload (`gateway_config_reloads{trigger}`).
    ReloadTrigger {
        /// SIGHUP.
        Signal => "signal",
        /// A watched file changed.
        File => "file",
    }
}

// === label sets ===

/// `gateway_requests`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct RequestLabels {
    /// The route class.
    pub(super) route: RouteClass,
    /// The method (known methods, else `OTHER`).
    pub(super) method: MethodLabel,
    /// The status answered.
    pub(super) status: u16,
    /// The client (`-` before authentication).
    pub(super) client: ClientLabel,
}

/// `gateway_request_duration_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct RouteLabels {
    /// The route class.
    pub(super) route: RouteClass,
}

/// `gateway_upstream_requests`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct UpstreamLabels {
    /// The upstream status, or `error`, `timeout`, `client_aborted`.
    pub(super) status: UpstreamOutcome,
    /// The organization the exchange was for (its configured name).
    pub(super) org: String,
}

/// Metrics of one organization (`gateway_cache_hits`, `gateway_cache_misses`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct OrgLabels {
    /// The organization's configured name.
    pub(super) org: String,
}

/// `gateway_upstream_auth_failures`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct AuthFailureLabels {
    /// 401 or 403.
    pub(super) status: u16,
}

/// `gateway_rate_limited`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct ClientLabels {
    /// The client refused.
    pub(super) client: ClientLabel,
}

/// `gateway_cache_invalidations`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct InvalidationLabels {
    /// Why users were evicted.
    pub(super) reason: Invalidation,
    /// The organization evicted in (`*`: every organization).
    pub(super) org: String,
}

/// `gateway_cache_stale_served`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct StaleLabels {
    /// Why an expired user was served.
    pub(super) reason: StaleReason,
}

/// `gateway_invalidation_outbox_dropped`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct DroppedLabels {
    /// Why queued evictions were given up.
    pub(super) reason: DropReason,
}

/// `gateway_cache_refreshes`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct RefreshLabels {
    /// How the refetch ended.
    pub(super) result: RefreshResult,
}

/// `gateway_invalidations_published`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct PublishLabels {
    /// How the publish ended.
    pub(super) result: PublishResult,
}

/// `gateway_write_evictions`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct EvictionLabels {
    /// Which kind of row of the dependency table matched.
    pub(super) rule: EvictionRule,
    /// How the write ended.
    pub(super) outcome: WriteOutcome,
}

/// `gateway_config_reloads`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct ReloadLabels {
    /// How it ended.
    pub(super) result: ReloadResult,
    /// What asked for it.
    pub(super) trigger: ReloadTrigger,
}

/// `gateway_upstream_timeouts`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct PhaseLabels {
    /// Which deadline passed.
    pub(super) phase: TimeoutPhase,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value of `all`, as exposed.
    fn texts<T: Copy>(all: &[T], as_str: fn(T) -> &'static str) -> Vec<&'static str> {
        all.iter().copied().map(as_str).collect()
    }

    #[test]
    fn every_label_value_keeps_its_exposed_text() {
        // The dashboards, alerts and the README's table read these texts.
        let table: [(Vec<&str>, &[&str]); 12] = [
            (
                texts(MethodLabel::ALL, MethodLabel::as_str),
                &[
                    "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "OTHER",
                ],
            ),
            (
                texts(RouteClass::ALL, RouteClass::as_str),
                &["get_user", "user_write", "forward", "rejected"],
            ),
            (
                texts(Invalidation::ALL, Invalidation::as_str),
                &["write", "write_all", "purge", "purge_all"],
            ),
            (
                texts(StaleReason::ALL, StaleReason::as_str),
                &["error", "revalidate"],
            ),
            (
                texts(RefreshResult::ALL, RefreshResult::as_str),
                &["ok", "error", "gone", "unstorable"],
            ),
            (
                texts(TimeoutPhase::ALL, TimeoutPhase::as_str),
                &["headers", "body"],
            ),
            (
                texts(PublishResult::ALL, PublishResult::as_str),
                &["ok", "error", "timeout"],
            ),
            (
                texts(DropReason::ALL, DropReason::as_str),
                &["expired", "collapsed"],
            ),
            (
                texts(EvictionRule::ALL, EvictionRule::as_str),
                &[
                    "user_path",
                    "user_body",
                    "all",
                    "all_unlisted",
                    "all_body_unread",
                ],
            ),
            (
                texts(WriteOutcome::ALL, WriteOutcome::as_str),
                &["applied", "unknown"],
            ),
            (
                texts(ReloadResult::ALL, ReloadResult::as_str),
                &["ok", "error"],
            ),
            (
                texts(ReloadTrigger::ALL, ReloadTrigger::as_str),
                &["signal", "file"],
            ),
        ];
        for (got, want) in table {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn unknown_methods_are_bounded() {
        assert_eq!(
            MethodLabel::of(&Method::from_bytes(b"BREW").unwrap()).as_str(),
            "OTHER"
        );
    }

    #[test]
    fn a_label_value_encodes_as_its_text() {
        let family = prometheus_client::metrics::family::Family::<
            EvictionLabels,
            prometheus_client::metrics::counter::Counter,
        >::default();
        family
            .get_or_create(&EvictionLabels {
                rule: EvictionRule::AllBodyUnread,
                outcome: WriteOutcome::Unknown,
            })
            .inc();
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("e", "e", family);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(
            out.contains("e_total{rule=\"all_body_unread\",outcome=\"unknown\"} 1"),
            "{out}"
        );
    }
}
