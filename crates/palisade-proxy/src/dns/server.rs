//! The DNS proxy process core: UDP and TCP listeners, per-query policy,
//! forwarding to the original resolver (or a fixed upstream), the TCP retry
//! of truncated answers, learning before release, expiry, records.

use super::cache::{CacheLimits, FqdnCache};
use super::hook::{FqdnHook, FqdnUpdate, NoHook};
use super::record::{DnsRecord, Sink, rcode_name, type_name};
use super::verdict::{Action, Decision, PROTO_TCP, PROTO_UDP, decide, labels_of};
use super::wire::{self, Message};
use super::{redirect, socket};
use crate::error::ProxyError;
use crate::record::{L7Peer, L7Verdict};
use crate::snapshot::PolicySnapshot;
use arc_swap::ArcSwap;
use palisade_policy::api::L7Kind;
use palisade_policy::engine::Engine;
use palisade_policy::l7::L7Request;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::Interest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;

/// The default listening port (UDP and TCP).
pub const DEFAULT_DNS_PORT: u16 = 15053;

/// The answer to a denied query.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RejectCode {
    /// REFUSED (Cilium's default `refused`).
    #[default]
    Refused,
    /// NXDOMAIN (Cilium's `nameError`).
    NameError,
}

/// DNS proxy settings; every field has a default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct DnsConfig {
    /// UDP and TCP port (0: any free port, the same for both).
    pub port: u16,
    /// Install and reconcile the nftables TPROXY table for DNS redirects.
    pub manage_redirect: bool,
    pub nft_table: String,
    /// Forward every query here instead of to its original destination
    /// (explicit proxy mode; the policy is checked against this address).
    pub upstream: Option<SocketAddr>,
    pub reject: RejectCode,
    /// TTLs below this are raised to it, seconds.
    pub min_ttl: u32,
    /// Addresses kept per name per endpoint.
    pub max_ips_per_name: usize,
    /// How long an address stays after its TTL, milliseconds.
    #[serde(with = "ms")]
    pub grace: Duration,
    /// The longest an answer waits for its addresses to be enforced.
    #[serde(with = "ms")]
    pub max_delay: Duration,
    /// An upstream answer must arrive within this.
    #[serde(with = "ms")]
    pub upstream_timeout: Duration,
    /// Ask again over TCP when a UDP answer is truncated.
    pub tcp_fallback: bool,
    /// Send upstream queries from the client's address (IP_TRANSPARENT).
    pub preserve_source: bool,
    /// How often expired addresses are collected.
    #[serde(with = "ms")]
    pub expiry_interval: Duration,
    /// A TCP client connection with no query for this long is closed.
    #[serde(with = "ms")]
    pub tcp_idle_timeout: Duration,
    /// Queries in flight at most (UDP beyond it are dropped).
    pub max_inflight: usize,
    /// Log every record at info level (target `palisade::dns`).
    pub log_records: bool,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            port: DEFAULT_DNS_PORT,
            manage_redirect: true,
            nft_table: "palisade_dns".into(),
            upstream: None,
            reject: RejectCode::Refused,
            min_ttl: 0,
            max_ips_per_name: 1000,
            grace: Duration::from_secs(5),
            max_delay: Duration::from_millis(100),
            upstream_timeout: Duration::from_secs(5),
            tcp_fallback: true,
            preserve_source: true,
            expiry_interval: Duration::from_secs(1),
            tcp_idle_timeout: Duration::from_secs(10),
            max_inflight: 8192,
            log_records: false,
        }
    }
}

mod ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// Counters and the answer-to-enforced latency of one proxy.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DnsStats {
    pub queries: u64,
    pub forwarded: u64,
    pub denied: u64,
    pub dropped: u64,
    pub malformed: u64,
    pub upstream_errors: u64,
    pub tcp_fallbacks: u64,
    pub learned_ips: u64,
    pub expired_ips: u64,
    pub hook_timeouts: u64,
    /// Answer received to addresses enforced (hook done), microseconds,
    /// over the answers that taught new addresses (last 65,536).
    pub enforce_p50_us: u32,
    pub enforce_p99_us: u32,
    pub enforce_samples: usize,
}

#[derive(Debug, Default)]
struct Counters {
    queries: AtomicU64,
    forwarded: AtomicU64,
    denied: AtomicU64,
    dropped: AtomicU64,
    malformed: AtomicU64,
    upstream_errors: AtomicU64,
    tcp_fallbacks: AtomicU64,
    learned_ips: AtomicU64,
    expired_ips: AtomicU64,
    hook_timeouts: AtomicU64,
}

const ENFORCE_SAMPLES: usize = 65_536;

struct Shared {
    policy: ArcSwap<PolicySnapshot>,
    config: DnsConfig,
    cache: Arc<FqdnCache>,
    hook: Arc<dyn FqdnHook>,
    sink: Sink<DnsRecord>,
    counters: Counters,
    enforce_us: Mutex<VecDeque<u32>>,
    reply_socks: Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>,
    inflight: AtomicUsize,
    next_revision: AtomicU64,
    changed: watch::Sender<u64>,
    redirect_revision: AtomicU64,
}

/// How to start a DNS proxy.
pub struct DnsProxyOptions {
    pub config: DnsConfig,
    /// The node network namespace to run in (`None`: the caller's).
    pub netns: Option<String>,
    /// Runtime worker threads (default 1).
    pub workers: Option<usize>,
    pub policy: PolicySnapshot,
    pub hook: Arc<dyn FqdnHook>,
    pub sink: Sink<DnsRecord>,
}

impl Default for DnsProxyOptions {
    fn default() -> Self {
        DnsProxyOptions {
            config: DnsConfig::default(),
            netns: None,
            workers: None,
            policy: PolicySnapshot::empty(),
            hook: Arc::new(NoHook),
            sink: Sink::none(),
        }
    }
}

/// A running DNS proxy; dropping it stops it and removes its redirect.
pub struct DnsProxy {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for DnsProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsProxy")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl DnsProxy {
    /// Starts the proxy on its own thread and runtime; returns once both
    /// listeners are bound and the redirect (if managed) is installed.
    pub fn spawn(opts: DnsProxyOptions) -> Result<DnsProxy, ProxyError> {
        let t =
            crate::server::spawn_thread("palisade-dns", move |ready, stop| run(opts, ready, stop))?;
        Ok(DnsProxy {
            shared: t.shared,
            local_addr: t.local_addr,
            shutdown: t.shutdown,
            thread: Some(t.thread),
        })
    }

    /// `0.0.0.0:port` in the proxy's namespace (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn cache(&self) -> Arc<FqdnCache> {
        self.shared.cache.clone()
    }

    pub fn revision(&self) -> u64 {
        self.shared.policy.load().revision()
    }

    /// The revision whose redirect rules are installed.
    pub fn redirect_revision(&self) -> u64 {
        self.shared.redirect_revision.load(Ordering::Acquire)
    }

    /// Replaces the policy; returns the new revision.
    pub fn update_engine(&self, engine: Engine) -> u64 {
        let rev = self.shared.next_revision.fetch_add(1, Ordering::Relaxed);
        self.shared
            .policy
            .store(Arc::new(PolicySnapshot::new(engine, rev)));
        self.shared.changed.send_replace(rev);
        rev
    }

    pub fn stats(&self) -> DnsStats {
        self.shared.stats()
    }

    fn stop(&mut self) {
        self.shutdown.send_replace(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for DnsProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    fn stats(&self) -> DnsStats {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut v: Vec<u32> = match self.enforce_us.lock() {
            Ok(g) => g.iter().copied().collect(),
            Err(p) => p.into_inner().iter().copied().collect(),
        };
        v.sort_unstable();
        let pct = |p: f64| -> u32 {
            if v.is_empty() {
                return 0;
            }
            let i = ((v.len() as f64 - 1.0) * p).round() as usize;
            v[i.min(v.len() - 1)]
        };
        DnsStats {
            queries: l(&c.queries),
            forwarded: l(&c.forwarded),
            denied: l(&c.denied),
            dropped: l(&c.dropped),
            malformed: l(&c.malformed),
            upstream_errors: l(&c.upstream_errors),
            tcp_fallbacks: l(&c.tcp_fallbacks),
            learned_ips: l(&c.learned_ips),
            expired_ips: l(&c.expired_ips),
            hook_timeouts: l(&c.hook_timeouts),
            enforce_p50_us: pct(0.5),
            enforce_p99_us: pct(0.99),
            enforce_samples: v.len(),
        }
    }

    fn note_enforce(&self, d: Duration) {
        let us = u32::try_from(d.as_micros()).unwrap_or(u32::MAX);
        let mut g = match self.enforce_us.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if g.len() >= ENFORCE_SAMPLES {
            g.pop_front();
        }
        g.push_back(us);
    }
}

fn run(
    opts: DnsProxyOptions,
    ready: crate::server::ReadyTx<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.worker_threads(opts.workers.unwrap_or(1).max(1));
    let rt = match crate::server::enter_and_build(opts.netns.as_deref(), b, "palisade-dns-w") {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let table = opts.config.nft_table.clone();
    let managed = opts.config.manage_redirect;
    rt.block_on(async move {
        let (tcp, local_addr) = match crate::server::tproxy_listener(opts.config.port) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let std_udp = match socket::udp_listener(local_addr.port(), true) {
            Ok(s) => s,
            Err(e) => {
                let _ = ready.send(Err(ProxyError::socket(
                    format!("binding UDP {local_addr}"),
                    e,
                )));
                return;
            }
        };
        let udp = match UdpSocket::from_std(std_udp) {
            Ok(u) => Arc::new(u),
            Err(e) => {
                let _ = ready.send(Err(ProxyError::socket("registering the listeners", e)));
                return;
            }
        };
        let mut config = opts.config;
        config.port = local_addr.port();
        let rev = opts.policy.revision();
        let (changed, _) = watch::channel(rev);
        let shared = Arc::new(Shared {
            policy: ArcSwap::from_pointee(opts.policy),
            cache: Arc::new(FqdnCache::new(CacheLimits {
                min_ttl: config.min_ttl,
                max_ips_per_name: config.max_ips_per_name,
                grace: config.grace,
            })),
            config,
            hook: opts.hook,
            sink: opts.sink,
            counters: Counters::default(),
            enforce_us: Mutex::new(VecDeque::new()),
            reply_socks: Mutex::new(HashMap::new()),
            inflight: AtomicUsize::new(0),
            next_revision: AtomicU64::new(rev + 1),
            changed,
            redirect_revision: AtomicU64::new(0),
        });
        if shared.config.manage_redirect {
            let snap = shared.policy.load_full();
            let targets = redirect::targets(&snap, L7Kind::Dns);
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
        tracing::info!(target: "palisade::dns", %local_addr, "DNS proxy listening (UDP and TCP)");
        if ready.send(Ok((shared.clone(), local_addr))).is_err() {
            return;
        }
        tokio::spawn(expiry_loop(shared.clone()));
        let sh = shared.clone();
        let mut sd = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tcp_accept_loop(sh, tcp) => {}
                _ = sd.wait_for(|v| *v) => {}
            }
        });
        let mut sd = shutdown;
        tokio::select! {
            _ = udp_loop(shared, udp, local_addr) => {}
            _ = sd.wait_for(|v| *v) => {}
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
        let targets = redirect::targets(&snap, L7Kind::Dns);
        if targets != last {
            let table = shared.config.nft_table.clone();
            let port = shared.config.port;
            let t = targets.clone();
            match tokio::task::spawn_blocking(move || redirect::apply(&table, port, &t)).await {
                Ok(Ok(())) => last = targets,
                Ok(Err(e)) => tracing::error!(target: "palisade::dns", "{e}"),
                Err(e) => tracing::error!(target: "palisade::dns", "redirect update: {e}"),
            }
        }
        shared
            .redirect_revision
            .store(snap.revision(), Ordering::Release);
    }
}

async fn expiry_loop(shared: Arc<Shared>) {
    let mut tick =
        tokio::time::interval(shared.config.expiry_interval.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let gone = shared.cache.expire(Instant::now());
        if !gone.is_empty() {
            shared
                .counters
                .expired_ips
                .fetch_add(gone.len() as u64, Ordering::Relaxed);
            tracing::debug!(target: "palisade::dns", ips = ?gone, "FQDN addresses expired");
            shared.hook.forget(gone);
        }
    }
}

/// Releases an in-flight slot on drop.
struct Inflight(Arc<Shared>);

impl Drop for Inflight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn udp_loop(shared: Arc<Shared>, sock: Arc<UdpSocket>, local: SocketAddr) {
    let mut buf = vec![0u8; 65_535];
    loop {
        if let Err(e) = sock.readable().await {
            tracing::warn!(target: "palisade::dns", "UDP listener: {e}");
            return;
        }
        loop {
            let r = sock.try_io(Interest::READABLE, || {
                socket::recv_with_orig_dst(&*sock, &mut buf, local)
            });
            let (n, from, dst) = match r {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(target: "palisade::dns", "recvmsg: {e}");
                    break;
                }
            };
            if shared.inflight.fetch_add(1, Ordering::AcqRel) >= shared.config.max_inflight {
                shared.inflight.fetch_sub(1, Ordering::AcqRel);
                shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let slot = Inflight(shared.clone());
            let query = buf[..n].to_vec();
            let sh = shared.clone();
            let listener = sock.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let answer = process(&sh, &query, from, dst, Via::Udp).await;
                if let Some(answer) = answer {
                    send_udp_answer(&sh, &listener, local, dst, from, &answer).await;
                }
            });
        }
    }
}

/// Sends an answer as if from `dst`: from the listener when the client
/// addressed the proxy itself, else from a socket bound to `dst`.
async fn send_udp_answer(
    shared: &Shared,
    listener: &UdpSocket,
    local: SocketAddr,
    dst: SocketAddr,
    client: SocketAddr,
    answer: &[u8],
) {
    if dst.port() == local.port() {
        if let Err(e) = listener.send_to(answer, client).await {
            tracing::debug!(target: "palisade::dns", "answer to {client}: {e}");
        }
        return;
    }
    let sock = {
        let mut m = match shared.reply_socks.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        match m.get(&dst) {
            Some(s) => Some(s.clone()),
            None => match socket::reply_socket(dst) {
                Ok(s) => {
                    if m.len() >= 1024 {
                        m.clear();
                    }
                    let s = Arc::new(s);
                    m.insert(dst, s.clone());
                    Some(s)
                }
                Err(e) => {
                    tracing::warn!(target: "palisade::dns", "reply socket {dst}: {e}");
                    None
                }
            },
        }
    };
    if let Some(s) = sock
        && let Err(e) = s.send_to(answer, client).await
    {
        tracing::debug!(target: "palisade::dns", "answer to {client}: {e}");
    }
}

async fn tcp_accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(target: "palisade::dns", "accept: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let sh = shared.clone();
        tokio::spawn(async move { serve_tcp(sh, stream, client).await });
    }
}

async fn read_frame(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut msg).await?;
    Ok(msg)
}

async fn write_frame(stream: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len())
        .map_err(|_| std::io::Error::other("DNS message longer than 65535 bytes"))?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    stream.write_all(&out).await
}

async fn serve_tcp(shared: Arc<Shared>, mut stream: TcpStream, client: SocketAddr) {
    let Ok(dst) = stream.local_addr() else { return };
    let _ = stream.set_nodelay(true);
    let mut upstream: Option<TcpStream> = None;
    loop {
        let query =
            match tokio::time::timeout(shared.config.tcp_idle_timeout, read_frame(&mut stream))
                .await
            {
                Ok(Ok(q)) => q,
                _ => return,
            };
        match process(&shared, &query, client, dst, Via::Tcp(&mut upstream)).await {
            Some(answer) => {
                if write_frame(&mut stream, &answer).await.is_err() {
                    return;
                }
            }
            None => return,
        }
    }
}

enum Via<'a> {
    Udp,
    Tcp(&'a mut Option<TcpStream>),
}

async fn udp_exchange(
    query: &[u8],
    dst: SocketAddr,
    source: Option<IpAddr>,
    timeout: Duration,
) -> std::io::Result<Vec<u8>> {
    let sock = socket::upstream_socket(dst, source)?;
    sock.send(query).await?;
    let id = wire::Header::parse(query).map(|h| h.id).unwrap_or(0);
    let mut buf = vec![0u8; 65_535];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf))
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer from {dst}"),
                )
            })??;
        // Ignore anything that is not the answer to this query.
        if let Ok(h) = wire::Header::parse(&buf[..n])
            && h.response
            && h.id == id
        {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn tcp_exchange(
    conn: &mut Option<TcpStream>,
    query: &[u8],
    dst: SocketAddr,
    source: Option<IpAddr>,
    timeout: Duration,
) -> std::io::Result<Vec<u8>> {
    let fresh = conn.is_none();
    let attempt = async |conn: &mut Option<TcpStream>| -> std::io::Result<Vec<u8>> {
        if conn.is_none() {
            *conn = Some(crate::redirect::connect_upstream(dst, source, timeout).await?);
        }
        let Some(s) = conn.as_mut() else {
            return Err(std::io::Error::other("no upstream connection"));
        };
        write_frame(s, query).await?;
        tokio::time::timeout(timeout, read_frame(s))
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer from {dst}"),
                )
            })?
    };
    match attempt(conn).await {
        Ok(a) => Ok(a),
        Err(e) => {
            *conn = None;
            if fresh {
                return Err(e);
            }
            // A reused connection may have been closed by the server.
            let r = attempt(conn).await;
            if r.is_err() {
                *conn = None;
            }
            r
        }
    }
}

/// Handles one query; returns the answer for the client, if any.
async fn process(
    shared: &Shared,
    query: &[u8],
    client: SocketAddr,
    dst: SocketAddr,
    via: Via<'_>,
) -> Option<Vec<u8>> {
    let c = &shared.counters;
    c.queries.fetch_add(1, Ordering::Relaxed);
    let t0 = Instant::now();
    let time = SystemTime::now();
    let transport = match via {
        Via::Udp => "UDP",
        Via::Tcp(_) => "TCP",
    };
    let proto = if matches!(via, Via::Udp) {
        PROTO_UDP
    } else {
        PROTO_TCP
    };
    let msg = match Message::parse(query) {
        Ok(m) if !m.header.response && !m.questions.is_empty() => m,
        Ok(m) if m.header.response => {
            c.malformed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        _ => {
            c.malformed.fetch_add(1, Ordering::Relaxed);
            let a = wire::error_answer(query, wire::RCODE_FORMERR);
            return (!a.is_empty()).then_some(a);
        }
    };
    let upstream = shared.config.upstream.unwrap_or(dst);
    let snap = shared.policy.load_full();
    let mut decision: Option<Decision> = None;
    for q in &msg.questions {
        let req = L7Request::Dns {
            query: q.name.clone(),
        };
        let d = decide(&snap, client, upstream, proto, L7Kind::Dns, &req);
        let stop = d.action != Action::Forward;
        decision = Some(d);
        if stop {
            break;
        }
    }
    let decision = decision?;
    let qname = msg.qname().unwrap_or(".").to_string();
    // Labels only when someone reads the records.
    let wanted = shared.sink.is_connected();
    let labels = |id| {
        if wanted {
            labels_of(&snap, id)
        } else {
            Arc::from(Vec::new())
        }
    };
    let mut rec = DnsRecord {
        time,
        source: L7Peer::new(
            client,
            decision.source_identity,
            labels(decision.source_identity),
            decision.source_endpoint.clone(),
        ),
        destination: L7Peer::new(
            upstream,
            decision.destination_identity,
            labels(decision.destination_identity),
            decision.destination_endpoint.clone(),
        ),
        transport,
        direction: decision.direction,
        endpoint: decision.endpoint.clone(),
        query: qname.clone(),
        qtypes: msg.questions.iter().map(|q| type_name(q.qtype)).collect(),
        rcode: None,
        ips: Vec::new(),
        ttl: 0,
        cnames: Vec::new(),
        rrtypes: Vec::new(),
        verdict: L7Verdict::Forwarded,
        rules: decision.rules.clone(),
        explanation: decision.explanation.clone(),
        latency_ns: 0,
        enforce_ns: 0,
        tcp_fallback: false,
        policy_revision: decision.revision,
    };
    let finish = |mut rec: DnsRecord, answer: Option<Vec<u8>>| {
        rec.latency_ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
        if shared.config.log_records {
            tracing::info!(
                target: "palisade::dns",
                verdict = ?rec.verdict, rcode = rec.rcode.as_deref().unwrap_or("-"),
                src = %rec.source.ip, dst = %rec.destination.ip, endpoint = rec.endpoint.as_deref().unwrap_or("-"),
                ips = ?rec.ips, "{} {} {:?}", rec.transport, rec.query, rec.qtypes
            );
        }
        shared.sink.emit(rec);
        answer
    };
    match decision.action {
        Action::Drop => {
            c.dropped.fetch_add(1, Ordering::Relaxed);
            rec.verdict = L7Verdict::Dropped;
            return finish(rec, None);
        }
        Action::Deny => {
            c.denied.fetch_add(1, Ordering::Relaxed);
            let rcode = match shared.config.reject {
                RejectCode::Refused => wire::RCODE_REFUSED,
                RejectCode::NameError => wire::RCODE_NXDOMAIN,
            };
            rec.verdict = L7Verdict::Dropped;
            rec.rcode = Some(rcode_name(rcode));
            return finish(rec, Some(wire::error_answer(query, rcode)));
        }
        Action::Forward => {}
    }
    let source = shared.config.preserve_source.then(|| client.ip());
    let timeout = shared.config.upstream_timeout;
    // The answer relayed to the client, and the one learned from (the
    // complete TCP answer when a UDP answer was truncated).
    let exchanged = match via {
        Via::Udp => match udp_exchange(query, upstream, source, timeout).await {
            Ok(a) => {
                let truncated = wire::Header::parse(&a)
                    .map(|h| h.truncated)
                    .unwrap_or(false);
                if truncated && shared.config.tcp_fallback {
                    c.tcp_fallbacks.fetch_add(1, Ordering::Relaxed);
                    rec.tcp_fallback = true;
                    let mut conn = None;
                    match tcp_exchange(&mut conn, query, upstream, source, timeout).await {
                        Ok(full) => {
                            let limit = usize::from(msg.edns_udp_size.unwrap_or(512).max(512));
                            let relay = if full.len() <= limit { full.clone() } else { a };
                            Ok((relay, full))
                        }
                        Err(e) => {
                            tracing::debug!(target: "palisade::dns", "TCP retry to {upstream}: {e}");
                            Ok((a.clone(), a))
                        }
                    }
                } else {
                    Ok((a.clone(), a))
                }
            }
            Err(e) => Err(e),
        },
        Via::Tcp(conn) => tcp_exchange(conn, query, upstream, source, timeout)
            .await
            .map(|a| (a.clone(), a)),
    };
    let (relay, full) = match exchanged {
        Ok(x) => x,
        Err(e) => {
            tracing::debug!(target: "palisade::dns", "upstream {upstream}: {e}");
            c.upstream_errors.fetch_add(1, Ordering::Relaxed);
            rec.verdict = L7Verdict::Error;
            rec.rcode = Some(rcode_name(wire::RCODE_SERVFAIL));
            return finish(rec, Some(wire::error_answer(query, wire::RCODE_SERVFAIL)));
        }
    };
    c.forwarded.fetch_add(1, Ordering::Relaxed);
    let answer_at = Instant::now();
    if let Ok(m) = Message::parse(&full) {
        rec.rcode = Some(rcode_name(m.header.rcode));
        rec.rrtypes = m.answers.iter().map(|r| type_name(r.rtype)).collect();
        if m.header.rcode == wire::RCODE_NOERROR {
            let learned = wire::answer_ips(&m, &qname);
            rec.ips = learned.ips.iter().map(|(ip, _)| *ip).collect();
            rec.ttl = learned.ips.iter().map(|(_, t)| *t).min().unwrap_or(0);
            rec.cnames = learned.cnames.clone();
            if !learned.ips.is_empty() {
                let endpoint = decision
                    .source_endpoint
                    .clone()
                    .unwrap_or_else(|| "-".into());
                let mut new_ips = Vec::new();
                let mut evicted = Vec::new();
                for name in &learned.names {
                    let l = shared.cache.learn(&endpoint, name, &learned.ips, answer_at);
                    new_ips.extend(l.new_ips);
                    evicted.extend(l.evicted);
                }
                new_ips.sort();
                new_ips.dedup();
                if !evicted.is_empty() {
                    shared.hook.forget(evicted);
                }
                if !new_ips.is_empty() {
                    c.learned_ips
                        .fetch_add(new_ips.len() as u64, Ordering::Relaxed);
                    let fut = shared.hook.learn(FqdnUpdate {
                        endpoint,
                        names: learned.names,
                        ips: new_ips,
                    });
                    if tokio::time::timeout(shared.config.max_delay, fut)
                        .await
                        .is_err()
                    {
                        c.hook_timeouts.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(target: "palisade::dns", query = %qname, "addresses not enforced within max_delay; releasing the answer");
                    }
                    let d = answer_at.elapsed();
                    rec.enforce_ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
                    shared.note_enforce(d);
                }
            }
        }
    }
    finish(rec, Some(relay))
}
