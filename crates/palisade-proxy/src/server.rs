//! The proxy process core: the TPROXY listener, per-connection tasks,
//! limits and timeouts, the policy snapshot and its feed, and the handle
//! callers use to update and stop the proxy.

use crate::config::ProxyConfig;
use crate::error::ProxyError;
use crate::feed::{FeedSource, PolicyFeed};
use crate::http::HttpConn;
use crate::record::{L7Record, L7Verdict, RecordSink};
use crate::redirect;
use crate::snapshot::{ConnVerdict, PolicySnapshot};
use arc_swap::ArcSwap;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use palisade_policy::engine::Engine;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Counters of one proxy instance.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    accepted: AtomicU64,
    rejected_by_limit: AtomicU64,
    denied_connections: AtomicU64,
    forwarded_connections: AtomicU64,
    http_connections: AtomicU64,
    requests_forwarded: AtomicU64,
    requests_dropped: AtomicU64,
    requests_failed: AtomicU64,
    feed_rejected: AtomicU64,
}

/// A copy of the counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Stats {
    pub accepted: u64,
    pub rejected_by_limit: u64,
    pub denied_connections: u64,
    pub forwarded_connections: u64,
    pub http_connections: u64,
    pub requests_forwarded: u64,
    pub requests_dropped: u64,
    pub requests_failed: u64,
    /// Feed updates rejected as invalid (the previous policy stayed).
    pub feed_rejected: u64,
    pub open_connections: u64,
}

/// State shared by every task of one proxy.
pub(crate) struct Shared {
    pub policy: ArcSwap<PolicySnapshot>,
    pub config: ProxyConfig,
    pub sink: RecordSink,
    pub inflight: AtomicU64,
    open: AtomicU64,
    per_source: Mutex<HashMap<IpAddr, usize>>,
    counters: Counters,
    http: auto::Builder<TokioExecutor>,
    next_revision: AtomicU64,
    changed: watch::Sender<u64>,
    redirect_revision: AtomicU64,
    /// Where the proxy reports what it enforces (`None`: nowhere).
    status_file: Option<std::path::PathBuf>,
    /// Proxy revision -> the feed (agent) revision it was built from.
    feed_revisions: Mutex<BTreeMap<u64, u64>>,
    /// The last rejected feed: its revision and why.
    rejected: Mutex<Option<(Option<u64>, String)>>,
}

/// What the proxy process reports in its status file (JSON, replaced
/// atomically): the agent waits on it after writing a feed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ProxyStatus {
    pub pid: u32,
    /// The proxy's own policy revision in force.
    pub policy_revision: u64,
    /// The revision whose redirect rules are installed.
    pub redirect_revision: u64,
    /// The feed revision (the agent's) that is enforced, redirection included.
    pub feed_revision: Option<u64>,
    /// The feed revision last rejected, and why.
    pub rejected_feed_revision: Option<u64>,
    pub rejected_reason: Option<String>,
    pub stats: Stats,
}

impl Shared {
    fn new(
        config: ProxyConfig,
        sink: RecordSink,
        initial: PolicySnapshot,
        status_file: Option<std::path::PathBuf>,
    ) -> Self {
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            .keep_alive(true)
            .header_read_timeout(config.header_read_timeout)
            .max_buf_size(config.max_header_bytes.max(8192));
        http.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(config.max_concurrent_streams)
            .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX));
        let rev = initial.revision();
        let (changed, _) = watch::channel(rev);
        Shared {
            policy: ArcSwap::from_pointee(initial),
            config,
            sink,
            inflight: AtomicU64::new(0),
            open: AtomicU64::new(0),
            per_source: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            http,
            next_revision: AtomicU64::new(rev + 1),
            changed,
            redirect_revision: AtomicU64::new(0),
            status_file,
            feed_revisions: Mutex::new(BTreeMap::new()),
            rejected: Mutex::new(None),
        }
    }

    /// Notes which feed revision the proxy revision `rev` was built from.
    fn note_feed_revision(&self, rev: u64, feed: Option<u64>) {
        if let Some(f) = feed {
            let mut m = self
                .feed_revisions
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            m.insert(rev, f);
            // Only the newest few matter.
            while m.len() > 16 {
                m.pop_first();
            }
        }
    }

    /// A feed that could not be read or built: counted, logged and
    /// reported in the status file; the policy enforced stays.
    fn reject_feed(&self, feed: Option<u64>, reason: String) {
        self.counters.feed_rejected.fetch_add(1, Ordering::Relaxed);
        tracing::error!(target: "palisade::proxy", "feed rejected: {reason}");
        *self.rejected.lock().unwrap_or_else(|p| p.into_inner()) = Some((feed, reason));
        self.write_status();
    }

    /// The status as of now.
    fn status(&self) -> ProxyStatus {
        let policy_revision = self.policy.load().revision();
        let redirect_revision = if self.config.manage_redirect {
            self.redirect_revision.load(Ordering::Acquire)
        } else {
            policy_revision
        };
        let feed_revision = self
            .feed_revisions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .range(..=redirect_revision)
            .next_back()
            .map(|(_, f)| *f);
        let rejected = self
            .rejected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        ProxyStatus {
            pid: std::process::id(),
            policy_revision,
            redirect_revision,
            feed_revision,
            rejected_feed_revision: rejected.as_ref().and_then(|r| r.0),
            rejected_reason: rejected.map(|r| r.1),
            stats: self.stats(),
        }
    }

    /// Writes the status file (when there is one), atomically.
    fn write_status(&self) {
        let Some(path) = &self.status_file else {
            return;
        };
        let Ok(text) = serde_json::to_vec(&self.status()) else {
            return;
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let r = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = r {
            tracing::warn!(target: "palisade::proxy", "{}: {e}", path.display());
        }
    }

    pub(crate) fn record(&self, r: L7Record) {
        let c = match r.verdict {
            L7Verdict::Forwarded => &self.counters.requests_forwarded,
            L7Verdict::Dropped => &self.counters.requests_dropped,
            L7Verdict::Error => &self.counters.requests_failed,
        };
        c.fetch_add(1, Ordering::Relaxed);
        self.sink.emit(r, self.config.log_records);
    }

    /// Installs a new snapshot built with the next revision number.
    fn install(
        &self,
        build: impl FnOnce(u64) -> Result<PolicySnapshot, ProxyError>,
    ) -> Result<u64, ProxyError> {
        self.install_with(build, None)
    }

    /// [`Shared::install`], noting the feed revision it comes from.
    fn install_with(
        &self,
        build: impl FnOnce(u64) -> Result<PolicySnapshot, ProxyError>,
        feed_revision: Option<u64>,
    ) -> Result<u64, ProxyError> {
        let rev = self.next_revision.fetch_add(1, Ordering::Relaxed);
        let snap = build(rev)?;
        self.note_feed_revision(rev, feed_revision);
        self.policy.store(Arc::new(snap));
        self.changed.send_replace(rev);
        tracing::info!(target: "palisade::proxy", revision = rev, "policy updated");
        Ok(rev)
    }

    fn stats(&self) -> Stats {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            accepted: l(&c.accepted),
            rejected_by_limit: l(&c.rejected_by_limit),
            denied_connections: l(&c.denied_connections),
            forwarded_connections: l(&c.forwarded_connections),
            http_connections: l(&c.http_connections),
            requests_forwarded: l(&c.requests_forwarded),
            requests_dropped: l(&c.requests_dropped),
            requests_failed: l(&c.requests_failed),
            feed_rejected: l(&c.feed_rejected),
            open_connections: l(&self.open),
        }
    }
}

/// How to start a proxy.
#[derive(Debug, Default)]
pub struct ProxyOptions {
    pub config: ProxyConfig,
    /// The node network namespace to run in (`None`: the caller's).
    pub netns: Option<String>,
    /// Runtime worker threads (default: the number of CPUs).
    pub workers: Option<usize>,
    pub sink: RecordSink,
    /// The initial policy; when `None`, read from `feed` (an absent feed
    /// file means an empty policy until the agent writes one).
    pub initial: Option<PolicySnapshot>,
    /// Where updates come from (polled).
    pub feed: Option<FeedSource>,
    /// How often the feed is checked for changes (default 250 ms).
    pub feed_poll: Option<Duration>,
    /// Stop on SIGINT/SIGTERM, reload the feed on SIGHUP (the process).
    pub handle_signals: bool,
    /// Write a [`ProxyStatus`] here whenever what is enforced changes.
    pub status_file: Option<std::path::PathBuf>,
    /// Stop when the feed file's directory disappears (the agent's state
    /// was removed): a supervised proxy does not outlive its agent's state.
    pub exit_without_feed_dir: bool,
}

/// A running proxy. Dropping it stops the proxy (and removes its
/// redirection when it manages it).
#[derive(Debug)]
pub struct ProxyHandle {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("revision", &self.policy.load().revision())
            .field("config", &self.config)
            .finish()
    }
}

impl ProxyHandle {
    /// Starts a proxy on its own thread and runtime; returns once it
    /// listens and its redirection is installed.
    pub fn spawn(opts: ProxyOptions) -> Result<ProxyHandle, ProxyError> {
        let t = spawn_thread("palisade-proxy", move |ready, stop| run(opts, ready, stop))?;
        Ok(ProxyHandle {
            shared: t.shared,
            local_addr: t.local_addr,
            shutdown: t.shutdown,
            thread: Some(t.thread),
        })
    }

    /// The listening address (in the proxy's namespace).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The revision of the policy in force.
    pub fn revision(&self) -> u64 {
        self.shared.policy.load().revision()
    }

    /// The revision whose redirect rules are installed.
    pub fn redirect_revision(&self) -> u64 {
        self.shared.redirect_revision.load(Ordering::Acquire)
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<PolicySnapshot> {
        self.shared.policy.load_full()
    }

    /// Replaces the policy: existing connections use it from their next
    /// request on. Returns the new revision.
    pub fn update_engine(&self, engine: Engine) -> u64 {
        self.shared
            .install(|rev| Ok(PolicySnapshot::new(engine, rev)))
            .unwrap_or(0)
    }

    /// Replaces the policy with one built from a feed snapshot; an invalid
    /// snapshot changes nothing.
    pub fn update_feed(&self, feed: &PolicyFeed) -> Result<u64, ProxyError> {
        self.shared.install(|rev| feed.build(rev))
    }

    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// What the status file says.
    pub fn status(&self) -> ProxyStatus {
        self.shared.status()
    }

    /// Stops the proxy and waits for its thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    /// Waits until the proxy stops (by signal when `handle_signals`).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn stop(&mut self) {
        self.shutdown.send_replace(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A proxy started on its own thread, listening.
pub(crate) struct StartedThread<S> {
    pub shared: Arc<S>,
    pub local_addr: SocketAddr,
    pub shutdown: watch::Sender<bool>,
    pub thread: std::thread::JoinHandle<()>,
}

/// What a proxy's thread reports once it listens (or why it could not).
pub(crate) type ReadyTx<S> = std::sync::mpsc::Sender<Result<(Arc<S>, SocketAddr), ProxyError>>;

/// Starts `body` on a thread named `name` and waits until it reports that
/// it listens; on failure the thread is joined and its error returned.
/// Shared by the HTTP, DNS and Kafka proxies.
pub(crate) fn spawn_thread<S, F>(name: &str, body: F) -> Result<StartedThread<S>, ProxyError>
where
    S: Send + Sync + 'static,
    F: FnOnce(ReadyTx<S>, watch::Receiver<bool>) + Send + 'static,
{
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (shutdown, shutdown_rx) = watch::channel(false);
    let thread = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || body(ready_tx, shutdown_rx))
        .map_err(ProxyError::Runtime)?;
    match ready_rx.recv() {
        Ok(Ok((shared, local_addr))) => Ok(StartedThread {
            shared,
            local_addr,
            shutdown,
            thread,
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err(ProxyError::NotStarted)
        }
    }
}

/// Enters the network namespace `netns` (on this thread) and builds a
/// proxy's runtime from `b` (its flavour and worker count), threads named
/// `name`. Shared by the HTTP, DNS and Kafka proxies.
pub(crate) fn enter_and_build(
    netns: Option<&str>,
    mut b: tokio::runtime::Builder,
    name: &str,
) -> Result<tokio::runtime::Runtime, ProxyError> {
    if let Some(ns) = netns {
        crate::netns::enter(ns)?;
    }
    b.enable_all()
        .thread_name(name)
        .build()
        .map_err(ProxyError::Runtime)
}

/// Binds the TPROXY listener on `port` (0: any) and registers it with the
/// current runtime; returns it with its address.
pub(crate) fn tproxy_listener(port: u16) -> Result<(TcpListener, SocketAddr), ProxyError> {
    let std_listener = redirect::listener(port)?;
    let local_addr = std_listener
        .local_addr()
        .map_err(|e| ProxyError::socket("getsockname", e))?;
    let listener = TcpListener::from_std(std_listener)
        .map_err(|e| ProxyError::socket("registering the listener", e))?;
    Ok((listener, local_addr))
}

fn run(opts: ProxyOptions, ready: ReadyTx<Shared>, shutdown: watch::Receiver<bool>) {
    // One worker: a current-thread runtime, so a request's wakeups stay on
    // the one thread that serves it (no hand-off between a driver and a
    // worker). More: the work-stealing runtime.
    let b = if opts.workers == Some(1) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if let Some(n) = opts.workers {
            b.worker_threads(n.max(1));
        }
        b
    };
    let rt = match enter_and_build(opts.netns.as_deref(), b, "palisade-proxy-w") {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut config = opts.config.clone();
    let managed = config.manage_redirect;
    let table = config.clone();
    rt.block_on(async move {
        let mut initial_feed_revision = None;
        let initial = match (opts.initial, &opts.feed) {
            (Some(s), _) => s,
            (None, Some(feed)) => match feed.read() {
                Ok(f) => match f.build(1) {
                    Ok(s) => {
                        initial_feed_revision = f.revision;
                        s
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                },
                Err(ProxyError::Read { path, source })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    tracing::warn!(target: "palisade::proxy", "{}: not there yet; no policy until it is", path.display());
                    PolicySnapshot::empty()
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            },
            (None, None) => PolicySnapshot::empty(),
        };
        let (listener, local_addr) = match tproxy_listener(config.port) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        config.port = local_addr.port();
        let shared = Arc::new(Shared::new(config, opts.sink, initial, opts.status_file));
        shared.note_feed_revision(shared.policy.load().revision(), initial_feed_revision);
        if shared.config.manage_redirect {
            let snap = shared.policy.load_full();
            let r = redirect::install_routing()
                .and_then(|()| redirect::apply(&shared.config, &redirect::targets(&snap)));
            if let Err(e) = r {
                redirect::uninstall(&shared.config);
                let _ = ready.send(Err(e));
                return;
            }
            shared
                .redirect_revision
                .store(snap.revision(), Ordering::Release);
        }
        tracing::info!(target: "palisade::proxy", %local_addr, revision = shared.policy.load().revision(), "proxy listening");
        shared.write_status();
        if ready.send(Ok((shared.clone(), local_addr))).is_err() {
            return;
        }
        if shared.config.manage_redirect {
            tokio::spawn(reconcile_redirect(shared.clone()));
        }
        if shared.status_file.is_some() {
            // Counters move with every request: refresh the status file.
            let sh = shared.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    let s = sh.clone();
                    let _ = tokio::task::spawn_blocking(move || s.write_status()).await;
                }
            });
        }
        let (reload_tx, reload_rx) = watch::channel(0u64);
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut shutdown = merge_shutdown(shutdown, stop_rx);
        if let Some(feed) = opts.feed {
            let poll = opts.feed_poll.unwrap_or(Duration::from_millis(250));
            let orphan_stop = opts.exit_without_feed_dir.then(|| stop_tx.clone());
            tokio::spawn(watch_feed(shared.clone(), feed, poll, reload_rx, orphan_stop));
        }
        if opts.handle_signals {
            let (tx, rx) = watch::channel(false);
            tokio::spawn(signals(tx, reload_tx));
            shutdown = merge_shutdown(shutdown, rx);
        }
        accept_loop(shared, listener, shutdown).await;
    });
    drop(rt);
    if managed {
        redirect::uninstall(&table);
    }
    tracing::info!(target: "palisade::proxy", "proxy stopped");
}

fn merge_shutdown(a: watch::Receiver<bool>, b: watch::Receiver<bool>) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    for mut r in [a, b] {
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = r.wait_for(|v| *v).await;
            tx.send_replace(true);
        });
    }
    rx
}

async fn signals(stop: watch::Sender<bool>, reload: watch::Sender<u64>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::warn!(target: "palisade::proxy", "cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => { reload.send_modify(|v| *v += 1); }
        }
    }
    stop.send_replace(true);
}

/// Keeps the nftables redirect sets equal to the policy in force.
async fn reconcile_redirect(shared: Arc<Shared>) {
    let mut rx = shared.changed.subscribe();
    let mut last = redirect::targets(&shared.policy.load_full());
    while rx.changed().await.is_ok() {
        let snap = shared.policy.load_full();
        let targets = redirect::targets(&snap);
        if targets != last {
            let cfg = shared.config.clone();
            let t = targets.clone();
            match tokio::task::spawn_blocking(move || redirect::apply(&cfg, &t)).await {
                Ok(Ok(())) => last = targets,
                Ok(Err(e)) => tracing::error!(target: "palisade::proxy", "{e}"),
                Err(e) => tracing::error!(target: "palisade::proxy", "redirect update: {e}"),
            }
        }
        shared
            .redirect_revision
            .store(snap.revision(), Ordering::Release);
        shared.write_status();
    }
}

/// Polls the feed and installs every valid change.
async fn watch_feed(
    shared: Arc<Shared>,
    feed: FeedSource,
    poll: Duration,
    mut reload: watch::Receiver<u64>,
    orphan_stop: Option<watch::Sender<bool>>,
) {
    let feed_dir = match &feed {
        FeedSource::File(p) => p.parent().map(|d| d.to_path_buf()),
        FeedSource::ManifestDir { .. } => None,
    };
    let mut missing_dir_polls = 0;
    let mut last = feed.fingerprint().ok();
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            r = reload.changed() => r.is_ok(),
        };
        if let (Some(stop), Some(dir)) = (&orphan_stop, &feed_dir) {
            missing_dir_polls = if dir.is_dir() {
                0
            } else {
                missing_dir_polls + 1
            };
            if missing_dir_polls >= 4 {
                tracing::warn!(target: "palisade::proxy", "{}: the agent's state directory is gone; stopping", dir.display());
                stop.send_replace(true);
                return;
            }
        }
        let fp = match feed.fingerprint() {
            Ok(fp) => Some(fp),
            Err(e) => {
                tracing::debug!(target: "palisade::proxy", "feed: {e}");
                None
            }
        };
        if (!forced && fp == last) || fp.is_none() {
            continue;
        }
        last = fp;
        let f = feed.clone();
        let read = tokio::task::spawn_blocking(move || f.read()).await;
        let parsed = match read {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                shared.reject_feed(None, e.to_string());
                continue;
            }
            Err(e) => {
                tracing::error!(target: "palisade::proxy", "feed read: {e}");
                continue;
            }
        };
        let sh = shared.clone();
        let feed_revision = parsed.revision;
        let built = tokio::task::spawn_blocking(move || {
            sh.install_with(|rev| parsed.build(rev), feed_revision)
        });
        match built.await {
            Ok(Ok(_)) => {
                if !shared.config.manage_redirect {
                    shared.write_status();
                }
            }
            Ok(Err(e)) => shared.reject_feed(feed_revision, e.to_string()),
            Err(e) => tracing::error!(target: "palisade::proxy", "feed build: {e}"),
        }
    }
}

/// Releases a connection's slots when its task ends.
struct ConnSlot {
    shared: Arc<Shared>,
    source: IpAddr,
}

impl ConnSlot {
    fn acquire(shared: &Arc<Shared>, source: IpAddr) -> Option<ConnSlot> {
        let cfg = &shared.config;
        if shared.open.fetch_add(1, Ordering::AcqRel) >= cfg.max_connections as u64 {
            shared.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let mut m = match shared.per_source.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let n = m.entry(source).or_insert(0);
        if *n >= cfg.max_connections_per_source {
            drop(m);
            shared.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        *n += 1;
        Some(ConnSlot {
            shared: shared.clone(),
            source,
        })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.shared.open.fetch_sub(1, Ordering::AcqRel);
        let mut m = match self.shared.per_source.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(n) = m.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.source);
            }
        }
    }
}

fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait_for(|v| *v) => break,
        };
        let (stream, client) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(target: "palisade::proxy", "accept: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
        let Some(slot) = ConnSlot::acquire(&shared, client.ip()) else {
            shared
                .counters
                .rejected_by_limit
                .fetch_add(1, Ordering::Relaxed);
            reset(stream);
            continue;
        };
        let sh = shared.clone();
        tokio::spawn(async move {
            let _slot = slot;
            handle_connection(sh, stream, client).await;
        });
    }
}

async fn handle_connection(shared: Arc<Shared>, stream: TcpStream, client: SocketAddr) {
    let orig_dst = match stream.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let _ = stream.set_nodelay(true);
    let plan = shared.policy.load().plan(client, orig_dst);
    if plan.checks.is_empty() && orig_dst.port() == shared.config.port {
        // A direct connection to the proxy port: nothing to proxy to.
        reset(stream);
        return;
    }
    match plan.verdict {
        ConnVerdict::Deny(_) | ConnVerdict::Unsupported(_) => {
            shared
                .counters
                .denied_connections
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                target: "palisade::proxy",
                src = %client, dst = %orig_dst,
                src_identity = plan.source.identity,
                "connection denied at L3/L4"
            );
            reset(stream);
        }
        ConnVerdict::Forward => {
            shared
                .counters
                .forwarded_connections
                .fetch_add(1, Ordering::Relaxed);
            forward_tcp(&shared, stream, client, orig_dst).await;
        }
        ConnVerdict::Http => {
            shared
                .counters
                .http_connections
                .fetch_add(1, Ordering::Relaxed);
            serve_http(shared, stream, client, orig_dst, plan).await;
        }
    }
}

async fn forward_tcp(shared: &Shared, mut stream: TcpStream, client: SocketAddr, dst: SocketAddr) {
    let source = shared.config.preserve_source.then(|| client.ip());
    match redirect::connect_upstream(dst, source, shared.config.connect_timeout).await {
        Ok(mut up) => {
            let _ = tokio::io::copy_bidirectional(&mut stream, &mut up).await;
        }
        Err(e) => {
            tracing::debug!(target: "palisade::proxy", "upstream {dst}: {e}");
            reset(stream);
        }
    }
}

async fn serve_http(
    shared: Arc<Shared>,
    stream: TcpStream,
    client: SocketAddr,
    orig_dst: SocketAddr,
    plan: crate::snapshot::ConnPlan,
) {
    let activity = Arc::new(AtomicU64::new(now_ms()));
    let io = TokioIo::new(ActivityIo {
        inner: stream,
        activity: activity.clone(),
    });
    let conn_state = Arc::new(HttpConn::new(shared.clone(), client, orig_dst, plan));
    let st = conn_state.clone();
    let svc = hyper::service::service_fn(move |req| {
        let st = st.clone();
        async move { Ok::<_, Infallible>(st.handle(req).await) }
    });
    let conn = shared.http.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    let cfg = &shared.config;
    let check = (cfg.header_read_timeout.min(cfg.idle_timeout) / 4)
        .clamp(Duration::from_millis(50), Duration::from_secs(5));
    let mut tick = tokio::time::interval(check);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(target: "palisade::proxy", %client, "connection: {e}");
                }
                break;
            }
            _ = tick.tick() => {
                if conn_state.inflight.load(Ordering::Relaxed) != 0 {
                    continue;
                }
                let limit = if conn_state.requests() == 0 {
                    cfg.header_read_timeout
                } else {
                    cfg.idle_timeout
                };
                let idle = now_ms().saturating_sub(activity.load(Ordering::Relaxed));
                if Duration::from_millis(idle) >= limit {
                    tracing::debug!(target: "palisade::proxy", %client, "closing idle connection");
                    break;
                }
            }
        }
    }
}

fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// A stream that remembers when a byte last moved.
struct ActivityIo {
    inner: TcpStream,
    activity: Arc<AtomicU64>,
}

impl AsyncRead for ActivityIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.store(now_ms(), Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for ActivityIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.store(now_ms(), Ordering::Relaxed);
        }
        r
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.store(now_ms(), Ordering::Relaxed);
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
