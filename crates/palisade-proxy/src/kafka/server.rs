//! The Kafka proxy process core: the transparent listener, one relay per
//! client connection (requests decided one by one, responses kept in
//! request order with their correlation ids checked), records.

use super::record::KafkaRecord;
use super::request::{ParsedRequest, parse_request};
use super::response::{clamp_api_versions, denial, denial_code};
use crate::dns::Sink;
use crate::dns::redirect;
use crate::dns::verdict::{Action, PROTO_TCP, decide, labels_of};
use crate::error::ProxyError;
use crate::record::{L7Peer, L7Verdict};
use crate::snapshot::PolicySnapshot;
use arc_swap::ArcSwap;
use palisade_policy::api::L7Kind;
use palisade_policy::engine::Engine;
use palisade_policy::l7::{KafkaRequest, L7Request, kafka_api_key_name};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

/// The default listening port.
pub const DEFAULT_KAFKA_PORT: u16 = 15092;

/// Kafka proxy settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct KafkaConfig {
    /// Listening port (0: any free port).
    pub port: u16,
    /// Install and reconcile the nftables TPROXY table for Kafka redirects.
    pub manage_redirect: bool,
    pub nft_table: String,
    /// Connect here instead of the original destination (explicit mode).
    pub upstream: Option<SocketAddr>,
    /// Largest request or response frame, bytes.
    pub max_frame_bytes: usize,
    /// Connecting to the broker must succeed within this, milliseconds.
    pub connect_timeout_ms: u64,
    /// Bind upstream connections to the client's address (IP_TRANSPARENT).
    pub preserve_source: bool,
    /// Log every record at info level (target `palisade::kafka`).
    pub log_records: bool,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            port: DEFAULT_KAFKA_PORT,
            manage_redirect: true,
            nft_table: "palisade_kafka".into(),
            upstream: None,
            max_frame_bytes: 64 << 20,
            connect_timeout_ms: 5000,
            preserve_source: true,
            log_records: false,
        }
    }
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KafkaStats {
    pub connections: u64,
    pub requests_forwarded: u64,
    pub requests_denied: u64,
    /// Connections closed: L3/L4 deny, unreadable request, or a denied
    /// request the proxy cannot answer.
    pub connections_closed: u64,
    pub parse_errors: u64,
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    forwarded: AtomicU64,
    denied: AtomicU64,
    closed: AtomicU64,
    parse_errors: AtomicU64,
}

struct Shared {
    policy: ArcSwap<PolicySnapshot>,
    config: KafkaConfig,
    sink: Sink<KafkaRecord>,
    counters: Counters,
    next_revision: AtomicU64,
    changed: watch::Sender<u64>,
    redirect_revision: AtomicU64,
}

/// How to start a Kafka proxy.
pub struct KafkaProxyOptions {
    pub config: KafkaConfig,
    pub netns: Option<String>,
    pub workers: Option<usize>,
    pub policy: PolicySnapshot,
    pub sink: Sink<KafkaRecord>,
}

impl Default for KafkaProxyOptions {
    fn default() -> Self {
        KafkaProxyOptions {
            config: KafkaConfig::default(),
            netns: None,
            workers: None,
            policy: PolicySnapshot::empty(),
            sink: Sink::none(),
        }
    }
}

/// A running Kafka proxy; dropping it stops it and removes its redirect.
pub struct KafkaProxy {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for KafkaProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaProxy")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl KafkaProxy {
    pub fn spawn(opts: KafkaProxyOptions) -> Result<KafkaProxy, ProxyError> {
        let t = crate::server::spawn_thread("palisade-kafka", move |ready, stop| {
            run(opts, ready, stop)
        })?;
        Ok(KafkaProxy {
            shared: t.shared,
            local_addr: t.local_addr,
            shutdown: t.shutdown,
            thread: Some(t.thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn redirect_revision(&self) -> u64 {
        self.shared.redirect_revision.load(Ordering::Acquire)
    }

    /// Replaces the policy (from each connection's next request on).
    pub fn update_engine(&self, engine: Engine) -> u64 {
        let rev = self.shared.next_revision.fetch_add(1, Ordering::Relaxed);
        self.shared
            .policy
            .store(Arc::new(PolicySnapshot::new(engine, rev)));
        self.shared.changed.send_replace(rev);
        rev
    }

    pub fn stats(&self) -> KafkaStats {
        let c = &self.shared.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        KafkaStats {
            connections: l(&c.connections),
            requests_forwarded: l(&c.forwarded),
            requests_denied: l(&c.denied),
            connections_closed: l(&c.closed),
            parse_errors: l(&c.parse_errors),
        }
    }
}

impl Drop for KafkaProxy {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    opts: KafkaProxyOptions,
    ready: crate::server::ReadyTx<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.worker_threads(opts.workers.unwrap_or(1).max(1));
    let rt = match crate::server::enter_and_build(opts.netns.as_deref(), b, "palisade-kafka-w") {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let table = opts.config.nft_table.clone();
    let managed = opts.config.manage_redirect;
    rt.block_on(async move {
        let (listener, local_addr) = match crate::server::tproxy_listener(opts.config.port) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let mut config = opts.config;
        config.port = local_addr.port();
        let rev = opts.policy.revision();
        let (changed, _) = watch::channel(rev);
        let shared = Arc::new(Shared {
            policy: ArcSwap::from_pointee(opts.policy),
            config,
            sink: opts.sink,
            counters: Counters::default(),
            next_revision: AtomicU64::new(rev + 1),
            changed,
            redirect_revision: AtomicU64::new(0),
        });
        if shared.config.manage_redirect {
            let snap = shared.policy.load_full();
            let targets = redirect::targets(&snap, L7Kind::Kafka);
            if let Err(e) = redirect::apply(&shared.config.nft_table, shared.config.port, &targets)
            {
                redirect::uninstall(&shared.config.nft_table);
                let _ = ready.send(Err(e));
                return;
            }
            shared
                .redirect_revision
                .store(snap.revision(), Ordering::Release);
            tokio::spawn(reconcile_redirect(shared.clone(), targets));
        }
        tracing::info!(target: "palisade::kafka", %local_addr, "Kafka proxy listening");
        if ready.send(Ok((shared.clone(), local_addr))).is_err() {
            return;
        }
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = shutdown.wait_for(|v| *v) => break,
            };
            match accepted {
                Ok((stream, client)) => {
                    let sh = shared.clone();
                    tokio::spawn(async move { serve(sh, stream, client).await });
                }
                Err(e) => {
                    tracing::warn!(target: "palisade::kafka", "accept: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    });
    rt.shutdown_timeout(Duration::from_millis(200));
    if managed {
        redirect::uninstall(&table);
    }
}

async fn reconcile_redirect(
    shared: Arc<Shared>,
    mut last: std::collections::BTreeSet<redirect::Target>,
) {
    let mut rx = shared.changed.subscribe();
    while rx.changed().await.is_ok() {
        let snap = shared.policy.load_full();
        let targets = redirect::targets(&snap, L7Kind::Kafka);
        if targets != last {
            let table = shared.config.nft_table.clone();
            let port = shared.config.port;
            let t = targets.clone();
            match tokio::task::spawn_blocking(move || redirect::apply(&table, port, &t)).await {
                Ok(Ok(())) => last = targets,
                Ok(Err(e)) => tracing::error!(target: "palisade::kafka", "{e}"),
                Err(e) => tracing::error!(target: "palisade::kafka", "redirect update: {e}"),
            }
        }
        shared
            .redirect_revision
            .store(snap.revision(), Ordering::Release);
    }
}

/// Reads one frame (without its size prefix); `Ok(None)` at a clean end.
async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = i32::from_be_bytes(len);
    let n = usize::try_from(n)
        .ok()
        .filter(|n| *n <= max)
        .ok_or_else(|| std::io::Error::other(format!("frame size {n} out of bounds")))?;
    let mut buf = vec![0u8; n];
    r.read_exact(&mut buf).await?;
    Ok(Some(buf))
}

async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> std::io::Result<()> {
    let n = i32::try_from(body.len()).map_err(|_| std::io::Error::other("frame too long"))?;
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(body);
    w.write_all(&out).await
}

/// What the response writer does next, in request order.
enum Pending {
    /// Relay the broker's next response (its correlation id must match).
    Upstream {
        correlation_id: i32,
        api_key: i16,
        api_version: i16,
    },
    /// Write a response the proxy built (a whole frame).
    Local(Vec<u8>),
}

async fn serve(shared: Arc<Shared>, client_stream: TcpStream, client: SocketAddr) {
    shared.counters.connections.fetch_add(1, Ordering::Relaxed);
    let Ok(orig_dst) = client_stream.local_addr() else {
        return;
    };
    let upstream_addr = shared.config.upstream.unwrap_or(orig_dst);
    let _ = client_stream.set_nodelay(true);
    let source = shared.config.preserve_source.then(|| client.ip());
    let timeout = Duration::from_millis(shared.config.connect_timeout_ms);
    let upstream = match crate::redirect::connect_upstream(upstream_addr, source, timeout).await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(target: "palisade::kafka", "upstream {upstream_addr}: {e}");
            shared.counters.closed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let (mut client_r, client_w) = client_stream.into_split();
    let (upstream_r, mut upstream_w) = upstream.into_split();
    let (tx, rx) = mpsc::channel::<Pending>(1024);
    let max = shared.config.max_frame_bytes;
    let writer = tokio::spawn(respond(rx, upstream_r, client_w, max));
    loop {
        let frame = match read_frame(&mut client_r, max).await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(target: "palisade::kafka", %client, "read: {e}");
                break;
            }
        };
        let parsed = match parse_request(&frame) {
            Ok(p) => p,
            Err(e) => {
                tracing::info!(target: "palisade::kafka", %client, "unreadable request, closing: {e}");
                shared.counters.parse_errors.fetch_add(1, Ordering::Relaxed);
                shared.counters.closed.fetch_add(1, Ordering::Relaxed);
                break;
            }
        };
        let action = decide_and_record(&shared, client, upstream_addr, &parsed);
        match action {
            Action::Forward => {
                shared.counters.forwarded.fetch_add(1, Ordering::Relaxed);
                if write_frame(&mut upstream_w, &frame).await.is_err() {
                    break;
                }
                if parsed.expects_response()
                    && tx
                        .send(Pending::Upstream {
                            correlation_id: parsed.correlation_id,
                            api_key: parsed.api_key,
                            api_version: parsed.api_version,
                        })
                        .await
                        .is_err()
                {
                    break;
                }
            }
            Action::Deny => {
                shared.counters.denied.fetch_add(1, Ordering::Relaxed);
                if !parsed.expects_response() {
                    continue;
                }
                match denial(&parsed) {
                    Ok(resp) => {
                        if tx.send(Pending::Local(resp)).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::info!(target: "palisade::kafka", %client, "denied and {e}: closing");
                        shared.counters.closed.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
            Action::Drop => {
                shared.counters.closed.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
    drop(tx);
    // Let the writer deliver what is still owed, then close.
    let _ = writer.await;
}

async fn respond(
    mut rx: mpsc::Receiver<Pending>,
    mut upstream_r: tokio::net::tcp::OwnedReadHalf,
    mut client_w: tokio::net::tcp::OwnedWriteHalf,
    max: usize,
) {
    while let Some(p) = rx.recv().await {
        match p {
            Pending::Local(bytes) => {
                if client_w.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Pending::Upstream {
                correlation_id,
                api_key,
                api_version,
            } => {
                let body = match read_frame(&mut upstream_r, max).await {
                    Ok(Some(b)) => b,
                    _ => return,
                };
                let corr = body
                    .get(0..4)
                    .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                if corr != Some(correlation_id) {
                    tracing::info!(target: "palisade::kafka", expected = correlation_id, got = ?corr, "response out of order: closing");
                    return;
                }
                let body = if api_key == 18 {
                    clamp_api_versions(&body, api_version)
                        .map(|f| f[4..].to_vec())
                        .unwrap_or(body)
                } else {
                    body
                };
                if write_frame(&mut client_w, &body).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = client_w.shutdown().await;
}

fn decide_and_record(
    shared: &Shared,
    client: SocketAddr,
    upstream: SocketAddr,
    parsed: &ParsedRequest,
) -> Action {
    let snap = shared.policy.load_full();
    let topics = parsed.topic_names();
    let req = L7Request::Kafka(KafkaRequest {
        api_key: parsed.api_key,
        api_version: parsed.api_version,
        client_id: parsed.client_id.clone(),
        topics: topics.clone(),
    });
    let d = decide(&snap, client, upstream, PROTO_TCP, L7Kind::Kafka, &req);
    let rec = KafkaRecord {
        time: SystemTime::now(),
        source: L7Peer::new(
            client,
            d.source_identity,
            labels_of(&snap, d.source_identity),
            d.source_endpoint.clone(),
        ),
        destination: L7Peer::new(
            upstream,
            d.destination_identity,
            labels_of(&snap, d.destination_identity),
            d.destination_endpoint.clone(),
        ),
        direction: d.direction,
        endpoint: d.endpoint.clone(),
        api_key: kafka_api_key_name(parsed.api_key)
            .map(str::to_string)
            .unwrap_or_else(|| parsed.api_key.to_string()),
        api_version: parsed.api_version,
        correlation_id: parsed.correlation_id,
        client_id: parsed.client_id.clone(),
        topics,
        verdict: if d.action == Action::Forward {
            L7Verdict::Forwarded
        } else {
            L7Verdict::Dropped
        },
        error_code: (d.action == Action::Deny).then(|| denial_code(parsed.api_key)),
        rules: d.rules.clone(),
        explanation: d.explanation.clone(),
        policy_revision: d.revision,
    };
    if shared.config.log_records {
        tracing::info!(
            target: "palisade::kafka",
            verdict = ?rec.verdict, api = %rec.api_key, version = rec.api_version,
            client_id = %rec.client_id, topics = ?rec.topics, src = %client, "{}", rec.explanation
        );
    }
    shared.sink.emit(rec);
    d.action
}
