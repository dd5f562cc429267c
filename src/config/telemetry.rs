//! `[telemetry]`: where spans are exported (OTLP over HTTP/protobuf), the
//! service name they carry and the share of requests without a sampled
//! parent that are traced. Restart-only: the exporter is built once at
//! start.

use http::Uri;

use super::defaults as d;
use super::raw::RawTelemetry;
use super::validate::Validator;

/// `[telemetry]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP base URL (spans go to
    /// `{otlp_endpoint}/v1/traces`); `None`: nothing is exported.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported resource.
    pub service_name: String,
    /// Share (0..=1) of requests without a sampled parent that are traced.
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: d::SERVICE_NAME.to_string(),
            sample_ratio: d::SAMPLE_RATIO,
        }
    }
}

impl TelemetryConfig {
    /// Where the spans are posted: `{otlp_endpoint}/v1/traces`.
    pub fn traces_url(&self) -> Option<String> {
        self.otlp_endpoint
            .as_deref()
            .map(|e| format!("{}/v1/traces", e.trim_end_matches('/')))
    }
}

impl Validator<'_> {
    pub(super) fn telemetry(&mut self, raw: RawTelemetry) -> TelemetryConfig {
        let RawTelemetry {
            otlp_endpoint,
            service_name,
            sample_ratio,
        } = raw;
        let otlp_endpoint = otlp_endpoint.filter(|e| match e.parse::<Uri>() {
            Ok(u)
                if matches!(u.scheme_str(), Some("http" | "https"))
                    && u.authority().is_some()
                    && u.query().is_none() =>
            {
                true
            }
            _ => {
                self.problem(format!(
                    "telemetry.otlp_endpoint: {e:?} is not an http:// or https:// URL without a query (e.g. \"http://127.0.0.1:4318\")"
                ));
                false
            }
        });
        let service_name = service_name.unwrap_or_else(|| d::SERVICE_NAME.to_string());
        if service_name.trim().is_empty() {
            self.problem("telemetry.service_name: must not be empty".into());
        }
        let sample_ratio = sample_ratio.unwrap_or(d::SAMPLE_RATIO);
        if !(0.0..=1.0).contains(&sample_ratio) {
            self.problem(format!(
                "telemetry.sample_ratio: {sample_ratio} is not between 0 and 1"
            ));
        }
        TelemetryConfig {
            otlp_endpoint,
            service_name,
            sample_ratio,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, std::path::Path::new("."), &|n| {
            (n == "OPENAI_ADMIN_KEY").then(|| "sk-admin-x".to_string())
        })
        .map_err(|e| e.problems().join("\n"))
    }

    #[test]
    fn defaults_export_nothing_and_sample_everything() {
        let c = parse("").expect("config");
        assert_eq!(c.telemetry.otlp_endpoint, None);
        assert_eq!(c.telemetry.traces_url(), None);
        assert_eq!(c.telemetry.service_name, "openai-admin-gateway");
        assert_eq!(c.telemetry.sample_ratio, 1.0);
    }

    #[test]
    fn an_endpoint_gets_the_traces_path() {
        let c = parse("[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318/\"\nsample_ratio = 0.25\nservice_name = \"gw\"\n")
            .expect("config");
        assert_eq!(
            c.telemetry.traces_url().as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
        assert_eq!(c.telemetry.sample_ratio, 0.25);
        assert_eq!(c.telemetry.service_name, "gw");
    }

    #[test]
    fn bad_values_are_reported_by_key() {
        let e = parse(
            "[telemetry]\notlp_endpoint = \"grpc://x:4317\"\nsample_ratio = 1.5\nservice_name = \" \"\n",
        )
        .expect_err("refused");
        for key in [
            "telemetry.otlp_endpoint",
            "telemetry.sample_ratio",
            "telemetry.service_name",
        ] {
            assert!(e.contains(key), "{key} missing in {e}");
        }
        let e = parse("[telemetry]\nsample_ratio = -0.1\n").expect_err("refused");
        assert!(e.contains("telemetry.sample_ratio"), "{e}");
        let e = parse("[telemetry]\nendpoint = \"http://x\"\n").expect_err("refused");
        assert!(e.contains("telemetry.endpoint"), "{e}");
    }
}
