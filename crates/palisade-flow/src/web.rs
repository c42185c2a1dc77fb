//! The flow web endpoints: the service map page, flows as JSON lines, and
//! Prometheus metrics. The agent serves them live; `palisade servicemap`
//! serves them from a file.

use crate::flow::FlowsResponse;
use crate::servicemap::render_page;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Deserialize;
use std::sync::Arc;

/// Where the endpoints get their data.
pub trait FlowSource: Send + Sync + 'static {
    /// Recent flows, oldest first.
    fn flows(&self) -> Vec<FlowsResponse>;
    /// Metrics in the Prometheus text format.
    fn metrics(&self) -> String;
    /// The page title.
    fn title(&self) -> String {
        "Palisade service map".into()
    }
}

#[derive(Deserialize)]
struct FlowsQuery {
    last: Option<usize>,
}

async fn page(State(src): State<Arc<dyn FlowSource>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        render_page(&src.title(), &src.flows()),
    )
}

async fn flows(
    State(src): State<Arc<dyn FlowSource>>,
    Query(q): Query<FlowsQuery>,
) -> impl IntoResponse {
    let all = src.flows();
    let skip = q.last.map_or(0, |n| all.len().saturating_sub(n));
    let mut body = String::new();
    for f in all.iter().skip(skip) {
        if let Ok(line) = serde_json::to_string(f) {
            body.push_str(&line);
            body.push('\n');
        }
    }
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body)
}

async fn metrics(State(src): State<Arc<dyn FlowSource>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        src.metrics(),
    )
}

/// `/` the service map, `/api/flows?last=N` flows (jsonpb lines), `/metrics`.
pub fn router(src: Arc<dyn FlowSource>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/flows", get(flows))
        .route("/metrics", get(metrics))
        .with_state(src)
}
