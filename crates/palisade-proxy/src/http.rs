//! HTTP/1.1, HTTP/2 (h2c prior knowledge) and gRPC enforcement on one
//! redirected connection.
//!
//! hyper serves the downstream side (keep-alive, pipelining, chunked
//! bodies; HTTP/1 parse errors get 400, oversized heads 431). Every request
//! is decided with the policy snapshot current at its arrival, then either
//! answered by the proxy (403 `Access denied`, or gRPC `PERMISSION_DENIED`)
//! or forwarded on this connection's own upstream connection to the
//! original destination (HTTP/1 to HTTP/1, HTTP/2 to HTTP/2).

use crate::record::{L7Peer, L7Record, L7Verdict};
use crate::redirect::connect_upstream;
use crate::server::Shared;
use crate::snapshot::{ConnPlan, HeaderRewrite, PolicySnapshot, RequestVerdict};
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use palisade_policy::l7::{HttpRequest, L7Request};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

/// What the proxy answers with: the upstream's body, or its own.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

/// The body of a denied HTTP request.
pub const ACCESS_DENIED: &str = "Access denied";
/// gRPC's PERMISSION_DENIED.
pub const GRPC_PERMISSION_DENIED: u32 = 7;
/// A denied request's body is drained up to this size so that the
/// connection stays usable; beyond it the connection is closed.
const DRAIN_LIMIT: usize = 64 * 1024;

/// Headers that belong to one HTTP/1 hop.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

/// Per-connection state of an HTTP connection.
pub(crate) struct HttpConn {
    shared: Arc<Shared>,
    client: SocketAddr,
    orig_dst: SocketAddr,
    plan: Mutex<Arc<ConnPlan>>,
    upstream: Upstream,
    requests: AtomicU64,
    pub(crate) inflight: AtomicU64,
}

impl HttpConn {
    pub(crate) fn new(
        shared: Arc<Shared>,
        client: SocketAddr,
        orig_dst: SocketAddr,
        plan: ConnPlan,
    ) -> Self {
        let source = shared.config.preserve_source.then(|| client.ip());
        HttpConn {
            upstream: Upstream {
                dst: orig_dst,
                source,
                h1: tokio::sync::Mutex::new(None),
                h2: Mutex::new(None),
            },
            shared,
            client,
            orig_dst,
            plan: Mutex::new(Arc::new(plan)),
            requests: AtomicU64::new(0),
            inflight: AtomicU64::new(0),
        }
    }

    /// Requests received so far.
    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The connection plan for `snap`: recomputed when the policy changed
    /// since the last request.
    fn plan_for(&self, snap: &PolicySnapshot) -> Arc<ConnPlan> {
        let mut guard = match self.plan.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if guard.revision != snap.revision() {
            *guard = Arc::new(snap.plan(self.client, self.orig_dst));
        }
        guard.clone()
    }

    /// Handles one request; never fails (errors become statuses).
    pub(crate) async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<ProxyBody> {
        let start = Instant::now();
        let time = SystemTime::now();
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let _inflight = InflightGuard::new(&self.shared, &self.inflight);
        let snap = self.shared.policy.load_full();
        let plan = self.plan_for(&snap);
        let l7req = L7Request::Http(http_request(&req));
        let mut verdict = snap.http_verdict(&plan, &l7req);
        let hreq = match l7req {
            L7Request::Http(h) => h,
            _ => HttpRequest::default(),
        };
        let protocol = if req.version() == Version::HTTP_2 {
            "HTTP/2"
        } else {
            "HTTP/1.1"
        };
        let url = format!("http://{}{}", hreq.host.as_deref().unwrap_or(""), hreq.path);
        let grpc = is_grpc(&req);
        let upgrade = wants_upgrade(&req);
        let mut rec = L7Record {
            time,
            source: L7Peer::new(
                self.client,
                plan.source.identity,
                plan.source.labels.clone(),
                plan.source.endpoint.clone(),
            ),
            destination: L7Peer::new(
                self.orig_dst,
                plan.destination.identity,
                plan.destination.labels.clone(),
                plan.destination.endpoint.clone(),
            ),
            direction: verdict.direction,
            endpoint: verdict.endpoint.take(),
            method: hreq.method,
            url,
            protocol: protocol.into(),
            status: None,
            grpc_status: None,
            latency_ns: 0,
            verdict: L7Verdict::Dropped,
            rules: std::mem::take(&mut verdict.rules),
            policy_revision: snap.revision(),
        };
        drop(snap);

        let over_limit = self.shared.inflight.load(Ordering::Relaxed)
            > self.shared.config.max_inflight_requests as u64;
        let close_after = self.shared.config.max_requests_per_connection != 0
            && n >= self.shared.config.max_requests_per_connection;

        let mut resp = if !verdict.allowed || (upgrade && !verdict.upgrade_allowed) {
            tracing::debug!(target: "palisade::proxy", "denied: {}", verdict.explanation);
            let version = req.version();
            let (_, body) = req.into_parts();
            let keep = drain(body, self.shared.config.header_read_timeout).await;
            let mut r = denied(grpc);
            if !keep && version != Version::HTTP_2 {
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            r
        } else if over_limit {
            rec.verdict = L7Verdict::Error;
            own_response(StatusCode::SERVICE_UNAVAILABLE, "proxy overloaded")
        } else {
            rec.verdict = L7Verdict::Forwarded;
            self.forward(req, &verdict, upgrade, &mut rec).await
        };
        if close_after && resp.version() != Version::HTTP_2 {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        rec.status = Some(resp.status().as_u16());
        rec.grpc_status = resp
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        rec.latency_ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.shared.record(rec);
        resp
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        verdict: &RequestVerdict,
        upgrade: bool,
        rec: &mut L7Record,
    ) -> Response<ProxyBody> {
        apply_rewrites(req.headers_mut(), &verdict.rewrites);
        if req.version() != Version::HTTP_2 {
            strip_hop_by_hop(req.headers_mut(), upgrade);
        }
        let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let is_connect = req.method() == Method::CONNECT;
        match self.upstream.send(&self.shared, req).await {
            Ok(mut resp) => {
                if let Some(down) = on_upgrade {
                    let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS
                        || (is_connect && resp.status().is_success());
                    if switched {
                        let up = hyper::upgrade::on(&mut resp);
                        tokio::spawn(async move {
                            match (down.await, up.await) {
                                (Ok(d), Ok(u)) => {
                                    let mut d = TokioIo::new(d);
                                    let mut u = TokioIo::new(u);
                                    let _ = tokio::io::copy_bidirectional(&mut d, &mut u).await;
                                }
                                (d, u) => tracing::debug!(
                                    target: "palisade::proxy",
                                    "upgrade failed: downstream {:?}, upstream {:?}",
                                    d.err(),
                                    u.err()
                                ),
                            }
                        });
                    }
                }
                resp.map(Either::Left)
            }
            Err(e) => {
                tracing::debug!(target: "palisade::proxy", "upstream {}: {e}", self.orig_dst);
                rec.verdict = L7Verdict::Error;
                if e.timed_out {
                    own_response(StatusCode::GATEWAY_TIMEOUT, "upstream connect timeout")
                } else {
                    own_response(StatusCode::BAD_GATEWAY, "upstream unavailable")
                }
            }
        }
    }
}

/// Counts a request in flight, on the connection and globally.
struct InflightGuard<'a> {
    shared: &'a Shared,
    conn: &'a AtomicU64,
}

impl<'a> InflightGuard<'a> {
    fn new(shared: &'a Shared, conn: &'a AtomicU64) -> Self {
        shared.inflight.fetch_add(1, Ordering::Relaxed);
        conn.fetch_add(1, Ordering::Relaxed);
        InflightGuard { shared, conn }
    }
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.shared.inflight.fetch_sub(1, Ordering::Relaxed);
        self.conn.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The request as the policy matcher sees it.
pub fn http_request<B>(req: &Request<B>) -> HttpRequest {
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        });
    HttpRequest {
        method: req.method().as_str().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".to_string()),
        host,
        headers: req
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
    }
}

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// An HTTP/1 `Upgrade` (other than `h2c`, which is simply not taken up) or
/// a `CONNECT`.
fn wants_upgrade<B>(req: &Request<B>) -> bool {
    if req.method() == Method::CONNECT {
        return true;
    }
    if req.version() == Version::HTTP_2 {
        return false;
    }
    req.headers().get_all(header::UPGRADE).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|p| !p.trim_ascii().eq_ignore_ascii_case(b"h2c"))
    })
}

fn strip_hop_by_hop(h: &mut http::HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE))
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        if keep_upgrade && (*n == "upgrade" || *n == "connection") {
            continue;
        }
        h.remove(*n);
    }
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

fn apply_rewrites(h: &mut http::HeaderMap, rewrites: &[HeaderRewrite]) {
    for rw in rewrites {
        match rw {
            HeaderRewrite::Log { name } => {
                tracing::info!(target: "palisade::l7", "headerMatches mismatch on {name} (LOG)");
            }
            HeaderRewrite::Add { name, value } => {
                if let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(value),
                ) {
                    h.append(n, v);
                }
            }
            HeaderRewrite::Delete { name } => {
                if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
                    h.remove(n);
                }
            }
            HeaderRewrite::Replace { name, value } => {
                if let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(value),
                ) {
                    h.insert(n, v);
                }
            }
        }
    }
}

/// Reads and discards a denied request's body (bounded in size and time)
/// so the connection can serve the next request. False: give up, close.
async fn drain(body: Incoming, timeout: std::time::Duration) -> bool {
    use hyper::body::Body;
    if body.is_end_stream() {
        return true;
    }
    matches!(
        tokio::time::timeout(timeout, Limited::new(body, DRAIN_LIMIT).collect()).await,
        Ok(Ok(_))
    )
}

/// The proxy's answer to a denied request.
pub fn denied(grpc: bool) -> Response<ProxyBody> {
    let mut r = Response::new(Either::Right(Full::new(Bytes::new())));
    if grpc {
        // Trailers-only: status and grpc-status in one HEADERS frame.
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from(GRPC_PERMISSION_DENIED));
        h.insert("grpc-message", HeaderValue::from_static("Access%20denied"));
        return r;
    }
    own_response(StatusCode::FORBIDDEN, ACCESS_DENIED)
}

fn own_response(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(Either::Right(Full::new(Bytes::from_static(
        body.as_bytes(),
    ))));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// Why an upstream exchange failed.
#[derive(Debug)]
pub(crate) struct UpstreamError {
    pub timed_out: bool,
    pub message: String,
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// This connection's upstream: one HTTP/1 or HTTP/2 client connection to
/// the original destination, from the client's address, opened lazily and
/// reopened when the destination closes it.
struct Upstream {
    dst: SocketAddr,
    source: Option<std::net::IpAddr>,
    h1: tokio::sync::Mutex<Option<http1::SendRequest<Incoming>>>,
    h2: Mutex<Option<http2::SendRequest<Incoming>>>,
}

impl Upstream {
    async fn connect(
        &self,
        shared: &Shared,
    ) -> Result<TokioIo<tokio::net::TcpStream>, UpstreamError> {
        connect_upstream(self.dst, self.source, shared.config.connect_timeout)
            .await
            .map(TokioIo::new)
            .map_err(|e| UpstreamError {
                timed_out: e.kind() == std::io::ErrorKind::TimedOut,
                message: format!("connecting to {}: {e}", self.dst),
            })
    }

    async fn send(
        &self,
        shared: &Shared,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let err = |e: hyper::Error| UpstreamError {
            timed_out: false,
            message: e.to_string(),
        };
        if req.version() == Version::HTTP_2 {
            let existing = {
                let g = match self.h2.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                g.as_ref().filter(|s| !s.is_closed()).cloned()
            };
            let mut sender = match existing {
                Some(s) => s,
                None => {
                    let io = self.connect(shared).await?;
                    let (s, conn) = http2::Builder::new(TokioExecutor::new())
                        .timer(TokioTimer::new())
                        .handshake(io)
                        .await
                        .map_err(err)?;
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(target: "palisade::proxy", "upstream h2: {e}");
                        }
                    });
                    let mut g = match self.h2.lock() {
                        Ok(g) => g,
                        Err(p) => p.into_inner(),
                    };
                    *g = Some(s.clone());
                    s
                }
            };
            sender.ready().await.map_err(err)?;
            return sender.send_request(req).await.map_err(err);
        }
        let mut guard = self.h1.lock().await;
        let reusable = match guard.as_mut() {
            Some(s) if !s.is_closed() => s.ready().await.is_ok(),
            _ => false,
        };
        if !reusable {
            let io = self.connect(shared).await?;
            let (s, conn) = http1::Builder::new().handshake(io).await.map_err(err)?;
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(target: "palisade::proxy", "upstream h1: {e}");
                }
            });
            *guard = Some(s);
        }
        let Some(sender) = guard.as_mut() else {
            return Err(UpstreamError {
                timed_out: false,
                message: "no upstream connection".into(),
            });
        };
        sender.send_request(req).await.map_err(err)
    }
}
