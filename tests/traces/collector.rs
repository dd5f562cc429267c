//! A real OTLP/HTTP receiver: a hyper server on loopback that takes
//! `POST /v1/traces`, decodes each `ExportTraceServiceRequest` with the
//! official protobuf definitions (`opentelemetry-proto`) and keeps the spans.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// One exported span, with the service name of its resource.
#[derive(Clone, Debug)]
pub struct Got {
    /// `service.name` of the resource it came with.
    pub service: String,
    /// The span as decoded.
    pub span: Span,
}

impl Got {
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }
    pub fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
    pub fn is_server(&self) -> bool {
        self.span.kind == SpanKind::Server as i32
    }
    pub fn is_client(&self) -> bool {
        self.span.kind == SpanKind::Client as i32
    }
    /// An attribute's value as text (strings as they are, numbers in decimal).
    pub fn attr(&self, key: &str) -> Option<String> {
        let kv = self.span.attributes.iter().find(|kv| kv.key == key)?;
        Some(match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => s.clone(),
            Value::IntValue(i) => i.to_string(),
            Value::BoolValue(b) => b.to_string(),
            Value::DoubleValue(d) => d.to_string(),
            other => format!("{other:?}"),
        })
    }
    /// The names of its events.
    pub fn events(&self) -> Vec<String> {
        self.span.events.iter().map(|e| e.name.clone()).collect()
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The receiver. Answers `status` (200 unless told otherwise).
pub struct Collector {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// Every span received, in arrival order.
    spans: Arc<Mutex<Vec<Got>>>,
    /// Export requests received (decoded or not).
    posts: Arc<Mutex<usize>>,
}

impl Collector {
    pub async fn start(status: StatusCode) -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let posts = Arc::new(Mutex::new(0));
        let (kept, counted) = (spans.clone(), posts.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (kept, counted) = (kept.clone(), counted.clone());
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (kept, counted) = (kept.clone(), counted.clone());
                    async move { Ok::<_, hyper::Error>(receive(req, status, &kept, &counted).await) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc),
                );
            }
        });
        Collector { addr, spans, posts }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn posts(&self) -> usize {
        *self.posts.lock().expect("posts")
    }

    pub fn spans(&self) -> Vec<Got> {
        self.spans.lock().expect("spans").clone()
    }

    /// Polls (up to 15 s) until the spans of `trace_id` satisfy `done`, and returns them.
    pub async fn wait_trace(&self, trace_id: &str, done: impl Fn(&[Got]) -> bool) -> Vec<Got> {
        let start = Instant::now();
        loop {
            let got: Vec<Got> = self
                .spans()
                .into_iter()
                .filter(|g| g.trace_id() == trace_id)
                .collect();
            if done(&got) {
                return got;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "trace {trace_id} never got what was expected; it has {got:#?}\nall: {:#?}",
                self.spans()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls (up to 15 s) until a span satisfies `pred`, and returns it.
    pub async fn wait_span(&self, what: &str, pred: impl Fn(&Got) -> bool) -> Got {
        let start = Instant::now();
        loop {
            if let Some(g) = self.spans().into_iter().find(&pred) {
                return g;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "no span {what}; got {:#?}",
                self.spans()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn receive(
    req: Request<Incoming>,
    status: StatusCode,
    kept: &Mutex<Vec<Got>>,
    counted: &Mutex<usize>,
) -> Response<Full<Bytes>> {
    *counted.lock().expect("posts") += 1;
    let ok = req.method() == Method::POST
        && req.uri().path() == "/v1/traces"
        && req
            .headers()
            .get("content-type")
            .is_some_and(|v| v == "application/x-protobuf");
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let decoded = body
        .ok()
        .and_then(|b| ExportTraceServiceRequest::decode(b).ok());
    let (Some(decoded), true) = (decoded, ok) else {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    if status == StatusCode::OK {
        let mut spans = kept.lock().expect("spans");
        for rs in decoded.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    spans.push(Got {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
    }
    let answer = ExportTraceServiceResponse::default().encode_to_vec();
    let mut r = Response::new(Full::new(Bytes::from(answer)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/x-protobuf"),
    );
    r
}
