//! `/metrics`: Prometheus text with upstream's request metrics,
//! `apiserver_request_total` and `apiserver_request_duration_seconds`, labelled by verb,
//! group, version, resource, subresource and scope (plus code on the counter).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::request::{self, Verb};

/// Upstream's buckets for apiserver_request_duration_seconds.
const BUCKETS: [f64; 23] = [
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
    10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: String,
    group: String,
    version: String,
    resource: String,
    subresource: String,
    scope: String,
    component: String,
}

/// The request labels plus the response code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CountLabels {
    #[prometheus(flatten)]
    request: RequestLabels,
    code: String,
}

type HistogramFn = fn() -> Histogram;

pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<CountLabels, Counter>,
    durations: Family<RequestLabels, Histogram, HistogramFn>,
}

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::default();
        let requests = Family::<CountLabels, Counter>::default();
        let durations = Family::<RequestLabels, Histogram, HistogramFn>::new_with_constructor(
            histogram as HistogramFn,
        );
        registry.register("apiserver_request", "Counter of apiserver requests broken out for each verb, group, version, resource, scope, component, and HTTP response code", requests.clone());
        registry.register("apiserver_request_duration_seconds", "Response latency distribution in seconds for each verb, group, version, resource, subresource, scope and component", durations.clone());
        Arc::new(Metrics {
            registry,
            requests,
            durations,
        })
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        out
    }
}

/// Upstream's verb label: LIST/WATCH for collection GETs, else the HTTP method. Labels
/// come only from the fixed verbs and the served resources, so requests for nonsense
/// paths cannot grow the number of series.
fn labels(method: &Method, path: &str, watch: bool) -> RequestLabels {
    let info = request::parse(method, path, watch)
        .filter(|i| crate::registry::find(&i.group, &i.version, &i.resource).is_some());
    let verb = match info.as_ref().map(|i| i.verb) {
        Some(Verb::List) => "LIST",
        Some(Verb::Watch) => "WATCH",
        Some(Verb::DeleteCollection) => "DELETECOLLECTION",
        _ => match *method {
            Method::GET => "GET",
            Method::POST => "POST",
            Method::PUT => "PUT",
            Method::PATCH => "PATCH",
            Method::DELETE => "DELETE",
            _ => "OTHER",
        },
    };
    let (group, version, resource, subresource, scope) = match &info {
        Some(i) => (
            i.group.clone(),
            i.version.clone(),
            i.resource.clone(),
            i.subresource
                .clone()
                .filter(|s| {
                    [
                        "status", "scale", "binding", "eviction", "finalize", "approval",
                    ]
                    .contains(&s.as_str())
                })
                .unwrap_or_default(),
            if i.name.is_some() {
                "resource"
            } else if i.namespace.is_some() {
                "namespace"
            } else {
                "cluster"
            }
            .to_string(),
        ),
        None => Default::default(),
    };
    RequestLabels {
        verb: verb.to_string(),
        group,
        version,
        resource,
        subresource,
        scope,
        component: "apiserver".into(),
    }
}

/// Middleware: times and counts every request.
pub(crate) async fn record(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let watch = request
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    let labels = labels(request.method(), request.uri().path(), watch);
    let response = next.run(request).await;
    metrics
        .durations
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    let count = CountLabels {
        request: labels,
        code: response.status().as_u16().to_string(),
    };
    metrics.requests.get_or_create(&count).inc();
    response
}

pub(crate) async fn serve(State(metrics): State<Arc<Metrics>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}
