//! The agent: owns the policy engine and the datapath, runs the local pods,
//! watches the manifests directory, serves the API, collects conntrack
//! garbage and reads datapath events.
//!
//! All state lives behind one mutex ([`State`]); every change follows the
//! same path: validate the whole change, build the candidate engine, swap it
//! in, reconcile the datapath by deltas. An invalid change never replaces
//! the last good state.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use palisade_datapath::netns::{self, PodSpec};
use palisade_datapath::{Datapath, DatapathConfig, DatapathEvent, Verdict as DpVerdict};
use palisade_policy::cluster::{Namespace, Node, Pod};
use palisade_policy::engine::Engine;
use palisade_policy::manifest::Object;
use palisade_policy::mapstate::RuleRef;

use crate::api::{
    ApplyReport, BpfPolicy, BpfPolicyRow, EndpointRow, FlowEvent, PodInfo, PodRunSpec, Request,
    Response, StatusInfo,
};
use crate::config::AgentConfig;
use crate::error::{AgentError, Result};
use crate::flows::{FlowHub, PeerBook};
use crate::ipam::Ipam;
use crate::l7proc::FeedGate;
use crate::pods::{self, PodRecord};
use crate::reconcile::{self, EndpointRuntime, EndpointStatus};
use crate::sources::{self, ApiStore, Fingerprint, SourceFile, Sourced};
use crate::store;

const EVENT_LOG_CAPACITY: usize = 20_000;

/// Everything mutable, behind one lock.
struct State {
    /// What the datapath enforces (audited policies left out).
    engine: Engine,
    /// Every policy, audited ones included (`None`: nothing is audited).
    full: Option<Engine>,
    datapath: Datapath,
    dir_objects: Vec<Sourced>,
    dir_fingerprint: Fingerprint,
    /// A changed fingerprint seen once: applied only when the next poll
    /// sees it unchanged, so a file caught mid-write (truncated, then
    /// written) is never applied.
    dir_pending: Option<Fingerprint>,
    dir_generation: u64,
    dir_errors: Vec<String>,
    api: ApiStore,
    api_objects: Vec<Sourced>,
    pods: BTreeMap<String, PodRecord>,
    ipam: Ipam,
    ifindex: BTreeMap<String, u32>,
    status: BTreeMap<String, EndpointStatus>,
    reconciliations: u64,
}

/// Cookie and endpoint tables used to attribute events.
#[derive(Default)]
struct Attribution {
    cookies: BTreeMap<u32, RuleRef>,
    /// Peers, identities and selecting policies for flows.
    book: PeerBook,
}

#[derive(Default)]
struct EventLog {
    seq: u64,
    events: VecDeque<FlowEvent>,
}

pub(crate) struct Shared {
    config: AgentConfig,
    state: Mutex<State>,
    attribution: RwLock<Attribution>,
    events: Mutex<EventLog>,
    flows: Arc<FlowHub>,
    /// The HTTP/gRPC proxy process (when `config.l7_proxy` is set).
    proxy: Mutex<Option<crate::l7proc::L7Process>>,
    /// The threads that follow and supervise it.
    proxy_threads: Mutex<Vec<JoinHandle<()>>>,
    /// Endpoints with a `policy_map_pressure` gauge.
    pressure_keys: Mutex<BTreeSet<String>>,
    /// The redirect targets the fail-closed guard holds (last applied).
    l7_guard: Mutex<Option<BTreeSet<palisade_proxy::redirect::GuardTarget>>>,
    /// The in-process DNS and Kafka proxies (started with the HTTP proxy).
    l7_extra: Mutex<L7Extra>,
    stop: AtomicBool,
}

/// A running agent. Dropping it stops its threads; the datapath (pinned
/// maps and links) and the pods stay, so enforcement continues.
pub struct Agent {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    web_addr: Option<SocketAddr>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("node", &self.shared.config.node_name)
            .finish_non_exhaustive()
    }
}

fn pods_path(cfg: &AgentConfig) -> PathBuf {
    cfg.state_dir.join("pods.json")
}

fn last_good_path(cfg: &AgentConfig) -> PathBuf {
    cfg.state_dir.join("manifests-last-good.json")
}

/// Creates the node namespace if needed, enables forwarding there and gives
/// it the node address (on `lo`). Idempotent.
pub fn ensure_node_netns(cfg: &AgentConfig) -> Result<()> {
    if !netns::netns_exists(&cfg.node_netns) {
        netns::create_netns(&cfg.node_netns)?;
        tracing::info!(netns = %cfg.node_netns, "created the node network namespace");
    }
    netns::enable_ip_forward(Some(&cfg.node_netns))?;
    netns::ip(&[
        "-n",
        &cfg.node_netns,
        "addr",
        "replace",
        &format!("{}/32", cfg.node_address),
        "dev",
        "lo",
    ])?;
    Ok(())
}

/// The objects the engines are built from, in override order, each with
/// where it came from (`None`: synthesised by the agent).
fn engine_objects<'a>(
    cfg: &AgentConfig,
    dir: &'a [Sourced],
    api: &'a [Sourced],
    pods: &BTreeMap<String, PodRecord>,
) -> Vec<(Object, Option<&'a Sourced>)> {
    let mut objects = Vec::new();
    let namespaces: BTreeSet<&str> = pods.values().map(|p| p.namespace.as_str()).collect();
    for ns in namespaces {
        let ns = Namespace {
            name: ns.to_string(),
            labels: BTreeMap::from([("kubernetes.io/metadata.name".to_string(), ns.to_string())]),
        };
        objects.push((Object::Namespace(ns), None));
    }
    let node = Node {
        name: cfg.node_name.clone(),
        labels: BTreeMap::from([("kubernetes.io/hostname".to_string(), cfg.node_name.clone())]),
        addresses: vec![cfg.node_address.into()],
    };
    objects.push((Object::Node(node), None));
    let mut declared = BTreeMap::new();
    for s in dir.iter().chain(api) {
        if let Object::Pod(p) = &s.object {
            declared.insert(p.key(), p.clone());
        }
        objects.push((s.object.clone(), Some(s)));
    }
    for rec in pods.values() {
        let pod = rec.to_pod(&cfg.node_name, declared.get(&rec.key()));
        objects.push((Object::Pod(pod), None));
    }
    objects
}

/// The L7 proxy process's feed: the same objects as [`build_engine`], in
/// the same order (source objects by reference to their file's text,
/// synthesised ones as manifests), and the names the DNS proxy learned.
fn feed_of(
    cfg: &AgentConfig,
    dir: &[Sourced],
    api: &[Sourced],
    pods: &BTreeMap<String, PodRecord>,
    fqdns: Vec<palisade_proxy::feed::FeedFqdn>,
) -> palisade_proxy::PolicyFeed {
    use palisade_proxy::feed::{FeedDocument, FeedFile};
    let mut files: Vec<FeedFile> = Vec::new();
    let mut file_index: BTreeMap<(&str, *const u8), usize> = BTreeMap::new();
    let mut documents = Vec::new();
    for (object, origin) in engine_objects(cfg, dir, api, pods) {
        let doc = match (origin, &object) {
            (Some(s), _) => {
                let file = *file_index
                    .entry((s.file.as_str(), s.text.as_ptr()))
                    .or_insert_with(|| {
                        files.push(FeedFile {
                            name: s.file.clone(),
                            text: s.text.to_string(),
                        });
                        files.len() - 1
                    });
                FeedDocument::Ref {
                    file,
                    index: s.index,
                }
            }
            (None, Object::Namespace(n)) => FeedDocument::Inline(n.to_manifest()),
            (None, Object::Node(n)) => FeedDocument::Inline(n.to_manifest()),
            (None, Object::Pod(p)) => FeedDocument::Inline(p.to_manifest()),
            (None, _) => continue,
        };
        documents.push(doc);
    }
    palisade_proxy::PolicyFeed {
        local_node: Some(cfg.node_name.clone()),
        files,
        documents,
        fqdns,
        options: palisade_proxy::feed::FeedOptions {
            enable_node_selector_labels: cfg.options.enable_node_selector_labels,
            enable_extended_ip_protocols: cfg.options.enable_extended_ip_protocols,
        },
        ..Default::default()
    }
}

/// Builds the engine from every source, in override order: synthesised
/// namespaces of local pods and the synthesised node, then the manifests
/// directory, then API objects, then the local pods (merged over pods the
/// sources declare).
fn build_engine(
    cfg: &AgentConfig,
    dir: &[Sourced],
    api: &[Sourced],
    pods: &BTreeMap<String, PodRecord>,
) -> (Engine, Option<Engine>) {
    let objects: Vec<Object> = engine_objects(cfg, dir, api, pods)
        .into_iter()
        .map(|(o, _)| o)
        .collect();
    // Audit mode: the datapath enforces the set without audited policies;
    // the full set is kept to report what it would deny.
    let audited = palisade_policy::audit::audited_policies(&objects);
    let make = |objects: Vec<Object>| {
        let mut engine = Engine::new();
        engine.set_local_node(Some(cfg.node_name.clone()));
        engine.apply_all(objects);
        engine
    };
    if audited.is_empty() {
        return (make(objects), None);
    }
    let enforced = palisade_policy::audit::enforced_objects(&objects, &audited);
    (make(enforced), Some(make(objects)))
}

/// The pod the sources (manifests directory, then API: the last wins)
/// declare under `key`.
fn declared_pod(dir: &[Sourced], api: &[Sourced], key: &str) -> Option<Pod> {
    dir.iter()
        .chain(api)
        .filter_map(|s| match &s.object {
            Object::Pod(p) if p.key() == key => Some(p),
            _ => None,
        })
        .next_back()
        .cloned()
}

/// Whether the sources declare a namespace.
fn namespace_declared(dir: &[Sourced], api: &[Sourced], name: &str) -> bool {
    dir.iter()
        .chain(api)
        .any(|s| matches!(&s.object, Object::Namespace(n) if n.name == name))
}

/// The pods a sources change adds, when that is all it does: every other
/// object (policies, namespaces, nodes, ...) and every pod already there
/// are unchanged, nothing is removed, and no added pod is a local pod's
/// key (local pods merge over declared ones) or on the host network.
/// `None`: anything else.
fn pods_added(
    old: &[&Sourced],
    new: &[&Sourced],
    local: &BTreeMap<String, PodRecord>,
) -> Option<Vec<Pod>> {
    let by_key = |v: &[&Sourced]| -> BTreeMap<String, String> {
        v.iter()
            .map(|s| (s.key.clone(), format!("{:?}", s.object)))
            .collect()
    };
    let (before, after) = (by_key(old), by_key(new));
    if before.len() != old.len() || after.len() != new.len() {
        return None;
    }
    if before.iter().any(|(k, o)| after.get(k) != Some(o)) {
        return None;
    }
    let mut added = Vec::new();
    for s in new.iter().filter(|s| !before.contains_key(&s.key)) {
        match &s.object {
            // Host-network pods: the engine's in-place path would give
            // them ipcache entries a rebuild does not.
            Object::Pod(p) if !local.contains_key(&p.key()) && !p.host_network => {
                added.push(p.clone())
            }
            _ => return None,
        }
    }
    Some(added)
}

/// Adds a pod to the engines in place (both views) when the engine takes
/// its incremental path and the result equals a from-scratch build: a new
/// pod in a namespace the engine already has, no named ports, and at
/// least one endpoint resolved. Returns the enforced view's deltas, or
/// `None` (nothing changed; the caller rebuilds).
fn add_pod_incremental(
    engine: &mut Engine,
    full: Option<&mut Engine>,
    pod: &Pod,
) -> Option<BTreeSet<String>> {
    let eligible = |e: &Engine| {
        e.state().namespaces.contains_key(&pod.namespace)
            && !e.state().pods.contains_key(&pod.key())
            && pod.ports.iter().all(|c| c.name.is_none())
            && e.endpoints().next().is_some()
    };
    if !eligible(engine) || full.as_deref().is_some_and(|f| !eligible(f)) {
        return None;
    }
    let mut touched = BTreeSet::new();
    if let Some(f) = full {
        touched.extend(f.apply(Object::Pod(pod.clone())).into_keys());
    }
    touched.extend(engine.apply(Object::Pod(pod.clone())).into_keys());
    Some(touched)
}

#[cfg(test)]
#[path = "agent_incremental_tests.rs"]
mod incremental_tests;

fn mac(prefix: u8, ep_id: u32) -> [u8; 6] {
    let b = ep_id.to_be_bytes();
    [0x02, prefix, b[0], b[1], b[2], b[3]]
}

impl Agent {
    /// Starts an agent: node namespace, datapath (adopting pinned state),
    /// persisted pods, sources, a first reconciliation, then the threads
    /// (event reader, conntrack GC, manifests watcher, API server).
    pub fn start(config: AgentConfig) -> Result<Agent> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.state_dir)
            .map_err(|e| AgentError::io(format!("creating {}", config.state_dir.display()), e))?;
        ensure_node_netns(&config)?;
        let mut datapath = Datapath::load_or_adopt(DatapathConfig {
            pin_root: config.pin_root.clone(),
            policy_capacity_per_endpoint: config.policy_capacity,
        })?;
        let reader = datapath.event_reader()?;
        let ipam = Ipam::load(
            config.state_dir.join("ipam.json"),
            config.pod_cidr,
            config.node_address,
        )?;
        let records: Vec<PodRecord> = store::read_json(&pods_path(&config))?.unwrap_or_default();
        let api = ApiStore::load(config.state_dir.join("api-objects.json"))?;
        let api_objects = api.objects(&config.options);

        // The manifests directory, or the last good snapshot if it is invalid now.
        let (dir_objects, dir_errors, dir_fingerprint) = match &config.manifests_dir {
            None => (Vec::new(), Vec::new(), Vec::new()),
            Some(dir) => {
                let fp = sources::fingerprint(dir);
                match sources::read_dir(dir).and_then(|files| {
                    sources::parse_all(&files, &config.options).map(|o| (files, o))
                }) {
                    Ok((files, objects)) => {
                        store::write_json(&last_good_path(&config), &files)?;
                        (objects, Vec::new(), fp)
                    }
                    Err(e) => {
                        tracing::error!(error = %e, diagnostics = ?e.diagnostics(), "manifests directory invalid at start; using the last good snapshot");
                        let files: Vec<SourceFile> =
                            store::read_json(&last_good_path(&config))?.unwrap_or_default();
                        let objects =
                            sources::parse_all(&files, &config.options).unwrap_or_default();
                        let mut errs = vec![e.to_string()];
                        errs.extend(e.diagnostics().iter().cloned());
                        (objects, errs, fp)
                    }
                }
            }
        };

        let mut pods = BTreeMap::new();
        let mut ifindex = BTreeMap::new();
        for rec in records {
            match restore_pod(&config, &mut datapath, &rec) {
                Ok(idx) => {
                    ifindex.insert(rec.key(), idx);
                }
                Err(e) => tracing::error!(pod = %rec.key(), error = %e, "could not restore pod"),
            }
            pods.insert(rec.key(), rec);
        }

        let config_ring_capacity = config.flow_ring_capacity;
        let node_name = config.node_name.clone();
        let web_listener =
            match config.web_listen {
                Some(addr) => Some(crate::flows::bind_web(addr).map_err(|e| {
                    AgentError::io(format!("binding the web endpoints on {addr}"), e)
                })?),
                None => None,
            };
        let web_addr = web_listener.as_ref().and_then(|l| l.local_addr().ok());
        let (engine, full) = build_engine(&config, &dir_objects, &api_objects, &pods);
        let state = State {
            engine,
            full,
            datapath,
            dir_objects,
            dir_fingerprint,
            dir_pending: None,
            dir_generation: 0,
            dir_errors,
            api,
            api_objects,
            pods,
            ipam,
            ifindex,
            status: BTreeMap::new(),
            reconciliations: 0,
        };
        let shared = Arc::new(Shared {
            config,
            state: Mutex::new(state),
            attribution: RwLock::new(Attribution::default()),
            events: Mutex::new(EventLog::default()),
            flows: Arc::new(FlowHub::new(config_ring_capacity, &node_name)),
            proxy: Mutex::new(None),
            proxy_threads: Mutex::new(Vec::new()),
            l7_guard: Mutex::new(None),
            pressure_keys: Mutex::new(BTreeSet::new()),
            l7_extra: Mutex::new(L7Extra::default()),
            stop: AtomicBool::new(false),
        });
        match shared.config.l7_proxy.clone() {
            Some(pcfg) => shared.start_l7_proxy(pcfg)?,
            None => {
                palisade_proxy::redirect::remove_guard(&shared.config.node_netns);
                let dir = shared.config.state_dir.join("l7-proxy");
                let program = shared.config.proxy_program.clone().unwrap_or_default();
                if let Some(pid) =
                    crate::l7proc::stop_leftover(&dir, &program, &shared.config.node_netns)
                {
                    tracing::warn!(
                        pid,
                        "stopped the L7 proxy an earlier agent left running (this agent runs without L7 proxies: --no-l7-proxy)"
                    );
                }
            }
        }
        {
            let mut st = shared.lock();
            shared.reconcile_locked(&mut st);
        }
        let mut agent = Agent {
            shared: shared.clone(),
            threads: Vec::new(),
            web_addr,
        };
        if let Some(listener) = web_listener {
            let hub = shared.flows.clone();
            agent.spawn("web", move |s| {
                crate::flows::serve_web(listener, hub, move || s.stopped())
            });
        }
        agent.spawn("events", move |s| s.event_loop(reader));
        agent.spawn("ct-gc", |s| s.gc_loop());
        if shared.config.manifests_dir.is_some() {
            agent.spawn("watch", |s| s.watch_loop());
        }
        if let Some(socket) = shared.config.socket.clone() {
            let listener = crate::server::bind(&socket)?;
            agent.spawn("api", move |s| crate::server::serve(s, listener));
        }
        tracing::info!(
            node = %shared.config.node_name,
            netns = %shared.config.node_netns,
            pin_root = %shared.config.pin_root.display(),
            "agent started"
        );
        Ok(agent)
    }

    fn spawn(&mut self, name: &str, f: impl FnOnce(Arc<Shared>) + Send + 'static) {
        let s = self.shared.clone();
        match std::thread::Builder::new()
            .name(format!("palisade-{name}"))
            .spawn(move || f(s))
        {
            Ok(h) => self.threads.push(h),
            Err(e) => tracing::error!(thread = name, error = %e, "could not start thread"),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &AgentConfig {
        &self.shared.config
    }

    /// Where the web endpoints (service map, `/api/flows`, `/metrics`)
    /// listen, if they do.
    pub fn web_addr(&self) -> Option<SocketAddr> {
        self.web_addr
    }

    /// Starts the L7 proxy now (when `config.l7_proxy` was not set at start).
    pub fn start_l7_proxy(&self, config: palisade_proxy::ProxyConfig) -> Result<()> {
        self.shared.start_l7_proxy(config)?;
        let mut st = self.shared.lock();
        self.shared.reconcile_locked(&mut st);
        Ok(())
    }

    /// The ring of recent flows and the metrics.
    pub fn flows(&self) -> &FlowHub {
        &self.shared.flows
    }

    /// Handles one API request (what the socket server calls).
    pub fn handle(&self, req: Request) -> Response {
        self.shared.handle(req)
    }

    /// Applies manifests (validated as one change).
    pub fn apply(&self, files: &[SourceFile]) -> Result<ApplyReport> {
        self.shared.apply(files)
    }

    /// Applies one manifest text.
    pub fn apply_text(&self, name: &str, text: &str) -> Result<ApplyReport> {
        self.apply(&[SourceFile {
            name: name.to_string(),
            text: text.to_string(),
        }])
    }

    /// Deletes the objects the manifests name.
    pub fn delete(&self, files: &[SourceFile]) -> Result<ApplyReport> {
        self.shared.delete(files)
    }

    /// Deletes the objects one manifest text names.
    pub fn delete_text(&self, name: &str, text: &str) -> Result<ApplyReport> {
        self.delete(&[SourceFile {
            name: name.to_string(),
            text: text.to_string(),
        }])
    }

    /// Runs a pod.
    pub fn run_pod(&self, spec: PodRunSpec) -> Result<PodInfo> {
        self.shared.run_pod(spec)
    }

    /// Deletes a pod.
    pub fn delete_pod(&self, key: &str) -> Result<()> {
        self.shared.delete_pod(key)
    }

    /// The pods.
    pub fn pods(&self) -> Vec<PodInfo> {
        self.shared.pod_list()
    }

    /// Status.
    pub fn status(&self) -> StatusInfo {
        self.shared.status()
    }

    /// Endpoints.
    pub fn endpoints(&self) -> Vec<EndpointRow> {
        self.shared.endpoint_list()
    }

    /// The live kernel policy of a pod.
    pub fn bpf_policy(&self, key: &str) -> Result<BpfPolicy> {
        self.shared.bpf_policy(key)
    }

    /// Events after `since`.
    pub fn events(&self, since: u64) -> Vec<FlowEvent> {
        self.shared.events_since(since)
    }

    /// Runs `f` with the engine (e.g. `trace`).
    pub fn with_engine<R>(&self, f: impl FnOnce(&Engine) -> R) -> R {
        let st = self.shared.lock();
        f(&st.engine)
    }

    /// Runs `f` with the datapath (tests and benchmarks).
    pub fn with_datapath<R>(&self, f: impl FnOnce(&mut Datapath) -> R) -> R {
        let mut st = self.shared.lock();
        f(&mut st.datapath)
    }

    /// Forces a manifests-directory check now (the watcher does it every
    /// `watch_interval`); returns whether the directory changed.
    pub fn check_manifests(&self) -> bool {
        self.shared.check_manifests()
    }

    /// Stops the threads (the datapath and pods stay).
    pub fn shutdown(mut self) {
        self.stop_threads();
    }

    fn stop_threads(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // The L7 proxy process keeps enforcing, as the pinned datapath
        // does; the next agent adopts it.
        if let Some(p) = self
            .shared
            .proxy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            tracing::info!(pid = p.pid(), "the L7 proxy process keeps running");
        }
        let proxy_threads: Vec<_> = self
            .shared
            .proxy_threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for t in proxy_threads {
            let _ = t.join();
        }
        self.shared.stop_l7_extra();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(s) = &self.shared.config.socket {
            let _ = std::fs::remove_file(s);
        }
    }

    /// Stops the agent and removes everything it created: pods, the node
    /// namespace, the pinned datapath and the state directory.
    pub fn destroy(mut self) {
        self.stop_threads();
        if let Some(p) = self
            .shared
            .proxy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            p.stop();
        }
        let cfg = self.shared.config.clone();
        drop(self);
        purge(&cfg.node_netns, &cfg.pin_root);
        let _ = std::fs::remove_dir_all(&cfg.state_dir);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

/// Removes a node namespace, every pod namespace named after it
/// (`<node_netns>-...`) and a pin root. Best effort; used by the lab and
/// tests to clean up even after a failure.
pub fn purge(node_netns: &str, pin_root: &Path) {
    let prefix = format!("{node_netns}-");
    if let Ok(rd) = std::fs::read_dir("/var/run/netns") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) {
                let _ = netns::delete_netns(&name);
            }
        }
    }
    if netns::netns_exists(node_netns) {
        let _ = netns::delete_netns(node_netns);
    }
    let _ = std::fs::remove_dir_all(pin_root);
}

/// Makes a persisted pod exist again (its namespace and veth survive an
/// agent restart; they are recreated if gone) and attaches the datapath
/// (swapping the program of a pinned link in place: no gap).
fn restore_pod(cfg: &AgentConfig, dp: &mut Datapath, rec: &PodRecord) -> Result<u32> {
    let existing = if netns::netns_exists(&rec.netns) {
        netns::ifindex_in(Some(&cfg.node_netns), &rec.host_ifname).ok()
    } else {
        None
    };
    let ifindex = match existing {
        Some(i) => i,
        None => {
            tracing::warn!(pod = %rec.key(), "pod namespace or veth missing; recreating");
            if netns::netns_exists(&rec.netns) {
                let _ = netns::delete_netns(&rec.netns);
            }
            create_pod_netns(cfg, rec)?
        }
    };
    attach(cfg, dp, ifindex)?;
    Ok(ifindex)
}

fn create_pod_netns(cfg: &AgentConfig, rec: &PodRecord) -> Result<u32> {
    let pod = netns::create_pod(
        Some(&cfg.node_netns),
        &PodSpec {
            netns: rec.netns.clone(),
            host_ifname: rec.host_ifname.clone(),
            ip: rec.ip,
            host_mac: mac(0xfe, rec.ep_id),
            pod_mac: mac(0xfd, rec.ep_id),
        },
    )?;
    Ok(pod.host_ifindex)
}

fn attach(cfg: &AgentConfig, dp: &mut Datapath, ifindex: u32) -> Result<()> {
    netns::in_netns(&cfg.node_netns, || dp.attach(ifindex))??;
    Ok(())
}

fn verdict_text(v: DpVerdict) -> String {
    match v {
        DpVerdict::Forwarded => "forwarded".into(),
        DpVerdict::Dropped => "dropped".into(),
        DpVerdict::Redirected => "redirected".into(),
        DpVerdict::Other(o) => format!("verdict-{o}"),
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn endpoints_runtime(st: &State) -> Vec<EndpointRuntime> {
        st.pods
            .values()
            .filter_map(|r| {
                st.ifindex.get(&r.key()).map(|i| EndpointRuntime {
                    key: r.key(),
                    ep_id: r.ep_id,
                    ifindex: *i,
                })
            })
            .collect()
    }

    fn reconcile_locked(&self, st: &mut State) {
        self.reconcile_all(st, Trigger::Policy);
    }

    /// Writes the whole enforced policy to the datapath, then feeds the L7
    /// proxies and rebuilds the flows' attribution.
    fn reconcile_all(&self, st: &mut State, trigger: Trigger) {
        if trigger == Trigger::Policy {
            // Names the DNS proxy learned survive every engine rebuild.
            self.replay_learned_fqdns(st);
        }
        let endpoints = Self::endpoints_runtime(st);
        let t0 = Instant::now();
        let outcome = reconcile::reconcile(
            &st.engine,
            &mut st.datapath,
            &endpoints,
            &self.config.node_name,
        );
        self.flows
            .metrics()
            .regeneration_seconds
            .observe(t0.elapsed().as_secs_f64());
        for e in &outcome.errors {
            tracing::error!(error = %e, ?trigger, "reconciliation");
        }
        let mut status = outcome.status;
        for rec in st.pods.values() {
            if !st.ifindex.contains_key(&rec.key()) {
                status.insert(
                    rec.key(),
                    EndpointStatus::Error("pod network could not be restored".into()),
                );
            }
        }
        st.status = status;
        st.reconciliations += 1;
        self.update_map_pressure(st, st.pods.keys());
        self.feed_proxies(st, trigger);
        let mut attr = self.attribution.write().unwrap_or_else(|p| p.into_inner());
        attr.cookies.extend(reconcile::cookie_table(&st.engine));
        attr.book = PeerBook::build(
            &st.engine,
            st.full.as_ref(),
            st.pods.values().map(|r| (r.key(), r.ip, r.ep_id)),
        );
    }

    /// The feed of the proxy process: what the engines are built from.
    fn proxy_feed(&self, st: &State) -> palisade_proxy::PolicyFeed {
        let mut names: BTreeMap<&str, Vec<std::net::IpAddr>> = BTreeMap::new();
        for (ip, ns) in st.engine.learned_fqdns() {
            for n in ns {
                names.entry(n.as_str()).or_default().push(ip);
            }
        }
        let fqdns = names
            .into_iter()
            .map(|(name, ips)| palisade_proxy::feed::FeedFqdn {
                name: name.to_string(),
                ips,
            })
            .collect();
        feed_of(
            &self.config,
            &st.dir_objects,
            &st.api_objects,
            &st.pods,
            fqdns,
        )
    }

    /// Feeds every running L7 proxy the enforced policy when it needs it
    /// (`l7proc::FeedGate`: redirect targets of its kind exist, or it may
    /// still redirect), waits until it enforces it (bounded by `trigger`),
    /// then updates the guard (every L7 redirect target). Without L7
    /// proxies (`--no-l7-proxy`) there is nothing to feed and no guard.
    fn feed_proxies(&self, st: &State, trigger: Trigger) {
        if !self.feed_proxy_process(st, trigger) {
            return;
        }
        self.feed_l7_extra(&st.engine, trigger);
        self.update_l7_guard(palisade_proxy::redirect::guard_targets(&st.engine));
    }

    /// Writes the proxy process's feed (when it needs it and the feed
    /// changed) and waits until it enforces it. False: no proxy process
    /// runs (nor the DNS and Kafka proxies, which start with it).
    fn feed_proxy_process(&self, st: &State, trigger: Trigger) -> bool {
        let mut g = self.proxy.lock().unwrap_or_else(|p| p.into_inner());
        let Some(p) = g.as_mut() else {
            return false;
        };
        let redirects = !palisade_proxy::redirect::targets_of(&st.engine).is_empty();
        if p.needs_feed(redirects) {
            match p.update(self.proxy_feed(st), redirects, trigger.proxy_wait()) {
                Ok(true) => {}
                Ok(false) => tracing::warn!(
                    pid = p.pid(),
                    "the L7 proxy's policy or redirect rules lag behind the agent's"
                ),
                Err(e) => tracing::error!(error = %e, "feeding the L7 proxy"),
            }
        }
        true
    }

    /// Keeps the fail-closed guard (forwarded packets of a redirect target
    /// are dropped: only what a proxy takes gets through) equal to the
    /// enforced policy's redirect targets.
    fn update_l7_guard(&self, targets: BTreeSet<palisade_proxy::redirect::GuardTarget>) {
        let mut g = self.l7_guard.lock().unwrap_or_else(|p| p.into_inner());
        if g.as_ref() == Some(&targets) {
            return;
        }
        match palisade_proxy::redirect::apply_guard(&self.config.node_netns, &targets) {
            Ok(()) => *g = Some(targets),
            Err(e) => tracing::error!(error = %e, "updating the L7 fail-closed guard"),
        }
    }

    /// Starts the HTTP/gRPC L7 proxy as a process of its own in the node
    /// namespace, or adopts the one an earlier agent left running (no-op
    /// when this agent has it). Its L7 records become flows; every
    /// reconciliation feeds it the policy. Also starts the in-process DNS
    /// and Kafka proxies.
    fn start_l7_proxy(self: &Arc<Self>, pcfg: palisade_proxy::ProxyConfig) -> Result<()> {
        if self
            .proxy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            return Ok(());
        }
        let program = match &self.config.proxy_program {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .map_err(|e| AgentError::io("finding this executable (the L7 proxy)", e))?,
        };
        let dir = self.config.state_dir.join("l7-proxy");
        let feed = self.proxy_feed(&self.lock());
        let process = crate::l7proc::L7Process::start_or_adopt(
            &dir,
            &program,
            &self.config.node_netns,
            &pcfg,
            feed,
        )?;
        tracing::info!(
            pid = process.pid(),
            "L7 proxy process running in the node namespace"
        );
        *self.proxy.lock().unwrap_or_else(|p| p.into_inner()) = Some(process);
        self.update_l7_guard(palisade_proxy::redirect::guard_targets(&self.lock().engine));
        let mut threads = Vec::new();
        let me = self.clone();
        let sock = crate::l7proc::L7Process::records_path(&dir);
        threads.push(
            std::thread::Builder::new()
                .name("palisade-l7-records".into())
                .spawn(move || {
                    palisade_proxy::relay::follow(&sock, || me.stopped(), |l| me.on_relay_line(l))
                })
                .map_err(|e| AgentError::io("starting the L7 records thread", e))?,
        );
        let me = self.clone();
        threads.push(
            std::thread::Builder::new()
                .name("palisade-l7-supervise".into())
                .spawn(move || me.supervise_proxy())
                .map_err(|e| AgentError::io("starting the L7 supervisor thread", e))?,
        );
        self.proxy_threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(threads);
        self.start_l7_extra()?;
        Ok(())
    }

    /// One line from the proxy process: a record becomes a flow and
    /// metrics; a loss is counted, never silent.
    fn on_relay_line(&self, line: palisade_proxy::relay::RelayLine) {
        let hub = &self.flows;
        match line {
            palisade_proxy::relay::RelayLine::Record(r) => {
                hub.metrics()
                    .proxy_requests
                    .get_or_create(&palisade_flow::metrics::ProxyLabels {
                        protocol: "http".into(),
                        verdict: format!("{:?}", r.verdict).to_ascii_uppercase(),
                    })
                    .inc();
                hub.metrics()
                    .proxy_latency_seconds
                    .observe(r.latency_ns as f64 / 1e9);
                self.push_l7_flow(crate::flows::flow_of_l7(&r, &self.config.node_name));
            }
            palisade_proxy::relay::RelayLine::Lost(n) => {
                tracing::warn!(lost = n, "L7 records the proxy could not deliver");
                hub.lost("OBSERVER_EVENTS_QUEUE", n);
            }
        }
    }

    /// An L7 flow from a proxy, completed like the datapath's flows
    /// (endpoint ids, identity labels), into the ring.
    fn push_l7_flow(&self, mut f: palisade_flow::flow::Flow) {
        self.attribution
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .book
            .complete_l7(&mut f);
        self.flows.push(f);
    }

    /// Starts the proxy process again whenever it dies.
    fn supervise_proxy(self: Arc<Self>) {
        while !self.wait_or_stop(Duration::from_millis(500)) {
            let st = self.lock();
            let mut g = self.proxy.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(p) = g.as_mut()
                && let Err(e) = p.ensure_running(|| self.proxy_feed(&st))
            {
                tracing::error!(error = %e, "restarting the L7 proxy");
            }
        }
    }

    /// A local pod was added (`st.pods` holds it): in place on both
    /// engines when the engine adds it incrementally, reconciling only the
    /// endpoints whose maps changed and the pod's ipcache entries; a full
    /// rebuild otherwise (new namespace, named ports, first endpoint, a
    /// declared pod it merges over, or an L7 proxy to feed).
    fn add_pod_and_reconcile(&self, st: &mut State, rec: &PodRecord) {
        let key = rec.key();
        if declared_pod(&st.dir_objects, &st.api_objects, &key).is_some() {
            return self.rebuild_and_reconcile(st);
        }
        let pod = rec.to_pod(&self.config.node_name, None);
        let Some(mut touched) = add_pod_incremental(&mut st.engine, st.full.as_mut(), &pod) else {
            return self.rebuild_and_reconcile(st);
        };
        touched.insert(key.clone());
        self.reconcile_touched(st, &touched, std::slice::from_ref(&pod));
    }

    /// A sources change (manifests directory or API) was stored in `st`;
    /// `old_dir` / `old_api` are what it replaced (`None`: unchanged).
    /// When it only adds pods, they go into the engines in place (one
    /// `Engine::apply` each) and only what they touch is reconciled;
    /// otherwise a full rebuild. Nothing is cloned for the comparison.
    fn sources_changed(
        &self,
        st: &mut State,
        old_dir: Option<&[Sourced]>,
        old_api: Option<&[Sourced]>,
    ) {
        let added = {
            let old: Vec<&Sourced> = old_dir
                .unwrap_or(&st.dir_objects)
                .iter()
                .chain(old_api.unwrap_or(&st.api_objects))
                .collect();
            let new: Vec<&Sourced> = st.dir_objects.iter().chain(&st.api_objects).collect();
            pods_added(&old, &new, &st.pods)
        };
        let added = match added {
            Some(a) if !a.is_empty() => a,
            _ => return self.rebuild_and_reconcile(st),
        };
        let mut touched = BTreeSet::new();
        for pod in &added {
            match add_pod_incremental(&mut st.engine, st.full.as_mut(), pod) {
                Some(t) => touched.extend(t),
                // The engines may hold part of the change: rebuild from the
                // sources, which hold all of it.
                None => return self.rebuild_and_reconcile(st),
            }
        }
        tracing::debug!(pods = added.len(), "sources change added pods in place");
        self.reconcile_touched(st, &touched, &added);
    }

    /// Reconciles what an in-place pod addition touched: the endpoints in
    /// `touched`, the ipcache entries and identities of `pods`.
    fn reconcile_touched(&self, st: &mut State, touched: &BTreeSet<String>, pods: &[Pod]) {
        let prefixes: Vec<palisade_datapath::ipcache::Ipv4Prefix> = pods
            .iter()
            .flat_map(|p| p.ips.iter())
            .filter_map(|ip| match ip {
                std::net::IpAddr::V4(a) => Some(palisade_datapath::ipcache::Ipv4Prefix::host(*a)),
                std::net::IpAddr::V6(_) => None,
            })
            .collect();
        let endpoints: Vec<EndpointRuntime> = Self::endpoints_runtime(st)
            .into_iter()
            .filter(|e| touched.contains(&e.key))
            .collect();
        let t0 = Instant::now();
        let outcome =
            reconcile::reconcile_endpoints(&st.engine, &mut st.datapath, &endpoints, &prefixes);
        self.flows
            .metrics()
            .regeneration_seconds
            .observe(t0.elapsed().as_secs_f64());
        for e in &outcome.errors {
            tracing::error!(error = %e, "reconciliation");
        }
        st.status.extend(outcome.status);
        for k in touched {
            if st.pods.contains_key(k) && !st.ifindex.contains_key(k) {
                st.status.insert(
                    k.clone(),
                    EndpointStatus::Error("pod network could not be restored".into()),
                );
            }
        }
        st.reconciliations += 1;
        self.update_map_pressure(st, touched.iter());
        self.feed_proxies(st, Trigger::Policy);
        let mut attr = self.attribution.write().unwrap_or_else(|p| p.into_inner());
        for k in touched {
            if let Some(m) = st.engine.endpoint_map(k) {
                attr.cookies.extend(m.cookies());
            }
        }
        // Only the new pods' identities and the touched endpoints change.
        attr.book.update(
            &st.engine,
            st.full.as_ref(),
            pods.iter()
                .filter_map(|p| st.engine.endpoint_identity(&p.key())),
            st.pods
                .values()
                .filter(|r| touched.contains(&r.key()))
                .map(|r| (r.key(), r.ip, r.ep_id)),
        );
    }

    /// A local pod was removed (`st.pods` no longer holds it):
    /// `Engine::delete_pod` on both engines in place (no rebuild from every
    /// source), unless a declared pod takes its place or its synthesised
    /// namespace goes with it (then a full rebuild).
    fn remove_pod_and_reconcile(&self, st: &mut State, rec: &PodRecord) {
        let key = rec.key();
        let ns_stays = st.pods.values().any(|p| p.namespace == rec.namespace)
            || namespace_declared(&st.dir_objects, &st.api_objects, &rec.namespace);
        if !ns_stays || declared_pod(&st.dir_objects, &st.api_objects, &key).is_some() {
            return self.rebuild_and_reconcile(st);
        }
        st.engine.delete_pod(&key);
        if let Some(f) = st.full.as_mut() {
            f.delete_pod(&key);
        }
        self.reconcile_locked(st);
    }

    fn rebuild_and_reconcile(&self, st: &mut State) {
        let (engine, full) = build_engine(&self.config, &st.dir_objects, &st.api_objects, &st.pods);
        st.engine = engine;
        st.full = full;
        self.reconcile_locked(st);
    }

    /// The engine's warnings, plus L7 rules nobody enforces.
    fn warnings(&self, st: &State) -> Vec<String> {
        let mut w = st.engine.warnings();
        if self.config.l7_proxy.is_none() {
            let mut unenforced = BTreeSet::new();
            for (_, _, map) in st.engine.endpoints() {
                for e in map.entries.values() {
                    if matches!(e.verdict, palisade_policy::mapstate::Verdict::Redirect(_)) {
                        unenforced.extend(e.derived_from.iter().map(|r| r.policy.to_string()));
                    }
                }
            }
            for p in unenforced {
                w.push(format!(
                    "{p}: its L7 rules are not enforced (the agent runs without L7 proxies: --no-l7-proxy): the ports they cover are allowed at L3/L4 without request filtering"
                ));
            }
        }
        w
    }

    /// `policy_map_pressure{endpoint}`: entries over capacity of the
    /// endpoints `keys` (a gauge is removed with its endpoint).
    fn update_map_pressure<'k>(&self, st: &State, keys: impl Iterator<Item = &'k String>) {
        let cap = self.config.policy_capacity.max(1) as f64;
        let family = &self.flows.metrics().policy_map_pressure;
        let mut gauged = self.pressure_keys.lock().unwrap_or_else(|p| p.into_inner());
        let mut keys: BTreeSet<String> = keys.cloned().collect();
        // Endpoints gone since the last full pass lose their gauge.
        keys.extend(gauged.iter().filter(|k| !st.pods.contains_key(*k)).cloned());
        for key in &keys {
            let labels = palisade_flow::metrics::EndpointLabels {
                endpoint: key.clone(),
            };
            match st.engine.endpoint_map(key) {
                Some(m) if st.pods.contains_key(key) => {
                    family
                        .get_or_create(&labels)
                        .set(m.entries.len() as f64 / cap);
                    gauged.insert(key.clone());
                }
                _ => {
                    family.remove(&labels);
                    gauged.remove(key);
                }
            }
        }
    }

    /// A change accepted at `t0` is enforced now (datapath written,
    /// proxies fed and confirmed): `apply_to_enforced_seconds`.
    fn observe_enforced(&self, t0: Instant) {
        self.flows
            .metrics()
            .apply_to_enforced_seconds
            .observe(t0.elapsed().as_secs_f64());
    }

    fn endpoint_errors(st: &State) -> Vec<String> {
        st.status
            .iter()
            .filter(|(_, s)| matches!(s, EndpointStatus::Error(_)))
            .map(|(k, s)| format!("{k}: {s}"))
            .collect()
    }

    fn apply(&self, files: &[SourceFile]) -> Result<ApplyReport> {
        let t0 = Instant::now();
        let objects = sources::parse_all(files, &self.config.options)?;
        if objects.is_empty() {
            return Err(AgentError::Invalid {
                summary: "the change holds no object Palisade acts on".into(),
                diagnostics: files
                    .iter()
                    .map(|f| format!("{}:1:1: no objects", f.name))
                    .collect(),
            });
        }
        let mut st = self.lock();
        let candidate = st.api.with_applied(files, &objects);
        let api_objects = candidate.objects(&self.config.options);
        candidate.save()?;
        st.api = candidate;
        let old_api = std::mem::replace(&mut st.api_objects, api_objects);
        self.sources_changed(&mut st, None, Some(&old_api));
        self.observe_enforced(t0);
        Ok(ApplyReport {
            objects: objects.iter().map(|o| o.key.clone()).collect(),
            not_found: vec![],
            warnings: self.warnings(&st),
            endpoint_errors: Self::endpoint_errors(&st),
        })
    }

    fn delete(&self, files: &[SourceFile]) -> Result<ApplyReport> {
        let t0 = Instant::now();
        let objects = sources::parse_all(files, &self.config.options)?;
        let keys: Vec<String> = objects.iter().map(|o| o.key.clone()).collect();
        let mut st = self.lock();
        let from_dir: Vec<String> = keys
            .iter()
            .filter(|k| !st.api.contains(k) && st.dir_objects.iter().any(|o| &o.key == *k))
            .map(|k| {
                let file = st
                    .dir_objects
                    .iter()
                    .find(|o| &o.key == k)
                    .map(|o| o.file.clone())
                    .unwrap_or_default();
                format!("{file}:1:1: {k} comes from the manifests directory; remove it there")
            })
            .collect();
        if !from_dir.is_empty() {
            return Err(AgentError::Invalid {
                summary: "some objects are defined in the manifests directory; nothing was deleted"
                    .into(),
                diagnostics: from_dir,
            });
        }
        let (candidate, not_found) = st.api.without(&keys);
        if not_found.len() == keys.len() {
            return Err(AgentError::NotFound(format!(
                "none of {} is applied",
                keys.join(", ")
            )));
        }
        let api_objects = candidate.objects(&self.config.options);
        candidate.save()?;
        st.api = candidate;
        st.api_objects = api_objects;
        self.rebuild_and_reconcile(&mut st);
        self.observe_enforced(t0);
        Ok(ApplyReport {
            objects: keys
                .into_iter()
                .filter(|k| !not_found.contains(k))
                .collect(),
            not_found,
            warnings: self.warnings(&st),
            endpoint_errors: Self::endpoint_errors(&st),
        })
    }

    fn check_manifests(&self) -> bool {
        let Some(dir) = &self.config.manifests_dir else {
            return false;
        };
        let fp = sources::fingerprint(dir);
        let mut st = self.lock();
        if fp == st.dir_fingerprint {
            st.dir_pending = None;
            return false;
        }
        if st.dir_pending.as_ref() != Some(&fp) {
            // Changed since the last poll: wait until it is stable.
            st.dir_pending = Some(fp);
            return false;
        }
        st.dir_pending = None;
        st.dir_fingerprint = fp;
        st.dir_generation += 1;
        // From the poll that saw the change stable (at most two watch
        // intervals after the write) to enforced, proxies included.
        let t0 = Instant::now();
        match sources::read_dir(dir)
            .and_then(|files| sources::parse_all(&files, &self.config.options).map(|o| (files, o)))
        {
            Ok((files, objects)) => {
                if let Err(e) = store::write_json(&last_good_path(&self.config), &files) {
                    tracing::warn!(error = %e, "could not save the manifests snapshot");
                }
                let old_dir = std::mem::replace(&mut st.dir_objects, objects);
                st.dir_errors.clear();
                self.sources_changed(&mut st, Some(&old_dir), None);
                self.observe_enforced(t0);
                tracing::info!(dir = %dir.display(), files = files.len(), "manifests directory applied");
            }
            Err(e) => {
                tracing::error!(error = %e, diagnostics = ?e.diagnostics(), "manifests directory change rejected; the last good policy stays enforced");
                let mut errs = vec![e.to_string()];
                errs.extend(e.diagnostics().iter().cloned());
                st.dir_errors = errs;
            }
        }
        true
    }

    fn wait_or_stop(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        while Instant::now() < deadline {
            if self.stop.load(Ordering::SeqCst) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50).min(d));
        }
        self.stop.load(Ordering::SeqCst)
    }

    fn watch_loop(self: Arc<Self>) {
        while !self.wait_or_stop(self.config.watch_interval) {
            self.check_manifests();
        }
    }

    fn gc_loop(self: Arc<Self>) {
        while !self.wait_or_stop(self.config.gc_interval) {
            let now = palisade_datapath::conntrack::monotonic_now_ns();
            let mut st = self.lock();
            match st.datapath.gc_conntrack(now) {
                Ok(s) if s.deleted > 0 => {
                    tracing::debug!(scanned = s.scanned, deleted = s.deleted, "conntrack gc")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "conntrack gc failed"),
            }
        }
    }

    fn event_loop(self: Arc<Self>, mut reader: palisade_datapath::EventReader) {
        // The pinned loss counter outlives agents: start from what an
        // earlier agent reported (a smaller counter means new pins), so
        // losses are reported once, including those while no agent ran.
        let reported_path = self.config.state_dir.join("events-lost-reported.json");
        let mut reported: u64 = store::read_json(&reported_path).ok().flatten().unwrap_or(0);
        if reader.events_lost().is_ok_and(|t| t >= reported) {
            self.flows.set_kernel_lost_baseline(reported);
        } else {
            reported = 0;
        }
        let mut lost_checked = Instant::now();
        while !self.stop.load(Ordering::SeqCst) {
            // The kernel counts events its ring buffer had no room for;
            // account for them at most every 100 ms.
            if lost_checked.elapsed() >= Duration::from_millis(100) {
                lost_checked = Instant::now();
                match reader.events_lost() {
                    Ok(total) => {
                        self.flows.kernel_lost(total);
                        let now = self.flows.kernel_lost_reported();
                        if now != reported {
                            reported = now;
                            if let Err(e) = store::write_json(&reported_path, &reported) {
                                tracing::warn!(error = %e, "saving the reported loss total");
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "reading the lost-events counter"),
                }
            }
            match reader.next_timeout(Duration::from_millis(200)) {
                Ok(Some(ev)) => self.record_event(&ev),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "reading datapath events");
                    if self.wait_or_stop(Duration::from_millis(200)) {
                        break;
                    }
                }
            }
        }
    }

    /// The event log's endpoint and rule texts of `ev`, from the same
    /// tables as its flow.
    fn attribute(attr: &Attribution, ev: &DatapathEvent) -> (String, String) {
        let ingress = ev.direction == palisade_datapath::Direction::Ingress;
        let local = if ingress { ev.daddr } else { ev.saddr };
        let endpoint = attr
            .book
            .pods_by_ip
            .get(&local)
            .filter(|p| p.ep_id == ev.ep_id)
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .unwrap_or_else(|| format!("endpoint {}", ev.ep_id));
        let rule = if ev.verdict == DpVerdict::Dropped
            && ev.drop_reason == palisade_datapath::DROP_POLICY
        {
            let sel = attr
                .book
                .selected_by
                .get(&ev.ep_id)
                .map(|(i, e)| if ingress { i } else { e })
                .filter(|s| !s.is_empty());
            match sel {
                Some(s) => format!(
                    "default deny, selected by {}",
                    s.iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => "default deny (no endpoint policy)".to_string(),
            }
        } else if ev.cookie == 0 {
            String::new()
        } else {
            match attr.cookies.get(&ev.cookie) {
                Some(r) => r.to_string(),
                None => format!("cookie {:#x} (unknown rule)", ev.cookie),
            }
        };
        (endpoint, rule)
    }

    fn record_event(&self, ev: &DatapathEvent) {
        let attr = self.attribution.read().unwrap_or_else(|p| p.into_inner());
        let ve = attr.book.verdict_event(
            ev,
            &attr.cookies,
            &self.config.node_name,
            crate::flows::wall_ns(ev.timestamp_ns),
        );
        let (endpoint, rule) = Self::attribute(&attr, ev);
        drop(attr);
        self.flows.push(ve.into_flow());
        if ev.verdict == DpVerdict::Dropped {
            tracing::debug!(%endpoint, src = %ev.saddr, dst = %ev.daddr, dport = ev.dport, reason = ev.drop_reason, %rule, "drop");
        }
        let mut log = self.events.lock().unwrap_or_else(|p| p.into_inner());
        log.seq += 1;
        let seq = log.seq;
        log.events.push_back(FlowEvent {
            seq,
            endpoint,
            direction: match ev.direction {
                palisade_datapath::Direction::Ingress => "ingress".into(),
                palisade_datapath::Direction::Egress => "egress".into(),
            },
            verdict: verdict_text(ev.verdict),
            drop_reason: ev.drop_reason,
            proto: ev.proto,
            src: format!("{}:{}", ev.saddr, ev.sport),
            dst: format!("{}:{}", ev.daddr, ev.dport),
            dport: ev.dport,
            remote_identity: ev.remote_identity,
            cookie: ev.cookie,
            rule,
        });
        while log.events.len() > EVENT_LOG_CAPACITY {
            log.events.pop_front();
        }
    }

    fn events_since(&self, since: u64) -> Vec<FlowEvent> {
        let log = self.events.lock().unwrap_or_else(|p| p.into_inner());
        log.events
            .iter()
            .filter(|e| e.seq > since)
            .cloned()
            .collect()
    }

    fn run_pod(&self, spec: PodRunSpec) -> Result<PodInfo> {
        pods::validate(&spec.namespace, &spec.name, &spec.labels)?;
        let key = format!("{}/{}", spec.namespace, spec.name);
        let mut st = self.lock();
        if st.pods.contains_key(&key) {
            return Err(AgentError::Conflict(format!("pod {key} already exists")));
        }
        let dp_max = st
            .datapath
            .endpoints()
            .unwrap_or_default()
            .iter()
            .map(|(_, i)| i.ep_id)
            .max()
            .unwrap_or(0);
        let ep_id = st
            .pods
            .values()
            .map(|p| p.ep_id)
            .max()
            .unwrap_or(0)
            .max(dp_max)
            + 1;
        let ip: Ipv4Addr = match spec.ip {
            Some(ip) => {
                st.ipam.reserve(ip, &key)?;
                ip
            }
            None => st.ipam.allocate(&key)?,
        };
        let rec = PodRecord {
            namespace: spec.namespace.clone(),
            name: spec.name.clone(),
            labels: spec.labels.clone(),
            ports: spec.ports.clone(),
            service_account: spec
                .service_account
                .clone()
                .unwrap_or_else(|| "default".into()),
            ip,
            ep_id,
            netns: format!(
                "{}-{}-{}",
                self.config.node_netns, spec.namespace, spec.name
            ),
            host_ifname: format!("lxc{ep_id:08x}"),
        };
        if netns::netns_exists(&rec.netns) {
            let _ = netns::delete_netns(&rec.netns);
        }
        let created = create_pod_netns(&self.config, &rec).and_then(|ifindex| {
            // Attached before the endpoint entry exists: the datapath treats
            // such an interface as default deny, never as open.
            attach(&self.config, &mut st.datapath, ifindex).map(|()| ifindex)
        });
        let ifindex = match created {
            Ok(i) => i,
            Err(e) => {
                let _ = netns::delete_netns(&rec.netns);
                let _ = st.ipam.release(ip);
                return Err(e);
            }
        };
        st.pods.insert(key.clone(), rec.clone());
        st.ifindex.insert(key.clone(), ifindex);
        let records: Vec<PodRecord> = st.pods.values().cloned().collect();
        store::write_json(&pods_path(&self.config), &records)?;
        self.add_pod_and_reconcile(&mut st, &rec);
        tracing::info!(pod = %key, %ip, ep_id, "pod running");
        Ok(Self::pod_info(&st, &rec))
    }

    fn pod_info(st: &State, rec: &PodRecord) -> PodInfo {
        PodInfo {
            pod: rec.key(),
            ip: rec.ip,
            labels: rec.labels.clone(),
            endpoint: rec.ep_id,
            netns: rec.netns.clone(),
            host_ifname: rec.host_ifname.clone(),
            status: st
                .status
                .get(&rec.key())
                .map(|s| s.to_string())
                .unwrap_or_else(|| "unknown".into()),
        }
    }

    fn delete_pod(&self, key: &str) -> Result<()> {
        let mut st = self.lock();
        let rec = st
            .pods
            .remove(key)
            .ok_or_else(|| AgentError::NotFound(format!("pod {key}")))?;
        let records: Vec<PodRecord> = st.pods.values().cloned().collect();
        store::write_json(&pods_path(&self.config), &records)?;
        if let Some(ifindex) = st.ifindex.remove(key) {
            let _ = st.datapath.remove_endpoint(ifindex);
            let _ = st.datapath.detach(ifindex);
        }
        let _ = st.datapath.policy_sync(rec.ep_id, &[]);
        if netns::netns_exists(&rec.netns) {
            netns::delete_netns(&rec.netns)?;
        }
        st.ipam.release(rec.ip)?;
        self.remove_pod_and_reconcile(&mut st, &rec);
        tracing::info!(pod = %key, "pod deleted");
        Ok(())
    }

    fn pod_list(&self) -> Vec<PodInfo> {
        let st = self.lock();
        st.pods.values().map(|r| Self::pod_info(&st, r)).collect()
    }

    fn status(&self) -> StatusInfo {
        let st = self.lock();
        let revision = st.datapath.policy_revision();
        StatusInfo {
            node_name: self.config.node_name.clone(),
            node_netns: self.config.node_netns.clone(),
            node_address: self.config.node_address.to_string(),
            pod_cidr: self.config.pod_cidr.to_string(),
            pin_root: self.config.pin_root.display().to_string(),
            datapath_loaded: revision.is_ok() && self.config.pin_root.join("policy").exists(),
            policy_revision: revision.unwrap_or(0),
            endpoints: st.pods.len(),
            endpoints_in_error: Self::endpoint_errors(&st).len(),
            policies: st.engine.policies().count(),
            identities: st.engine.identities().len(),
            ipcache_entries: st.engine.ipcache().len(),
            reconciliations: st.reconciliations,
            manifests_dir: self
                .config
                .manifests_dir
                .as_ref()
                .map(|d| d.display().to_string()),
            manifests_generation: st.dir_generation,
            manifests_errors: st.dir_errors.clone(),
            warnings: self.warnings(&st),
            l7_proxy: self
                .proxy
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_mut()
                .map(|p| p.info()),
        }
    }

    fn endpoint_list(&self) -> Vec<EndpointRow> {
        let st = self.lock();
        st.pods
            .values()
            .map(|rec| {
                let key = rec.key();
                let map = st.engine.endpoint_map(&key);
                let identity = st.engine.endpoint_identity(&key).unwrap_or(0);
                let labels = crate::flows::label_strings(&st.engine, identity);
                EndpointRow {
                    id: rec.ep_id,
                    pod: key.clone(),
                    ingress_enforced: map.is_some_and(|m| m.ingress.default_deny),
                    egress_enforced: map.is_some_and(|m| m.egress.default_deny),
                    identity,
                    labels,
                    ipv4: rec.ip.to_string(),
                    status: st
                        .status
                        .get(&key)
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "unknown".into()),
                    policy_entries: st.datapath.policy_len(rec.ep_id),
                }
            })
            .collect()
    }

    fn bpf_policy(&self, key: &str) -> Result<BpfPolicy> {
        let st = self.lock();
        let rec = st
            .pods
            .get(key)
            .ok_or_else(|| AgentError::NotFound(format!("pod {key} (not run by this agent)")))?;
        let live = st.datapath.policy_entries(rec.ep_id)?;
        let attr = self.attribution.read().unwrap_or_else(|p| p.into_inner());
        let map = st.engine.endpoint_map(key);
        let desired = map
            .map(|m| reconcile::desired_policy(rec.ep_id, m))
            .unwrap_or_default();
        let mut live_sorted = live.clone();
        live_sorted.sort_by_key(|(k, _)| *k);
        let mut desired_sorted = desired;
        desired_sorted.sort_by_key(|(k, _)| *k);
        let in_sync = live_sorted == desired_sorted;
        let entries = live
            .iter()
            .map(|(k, v)| {
                let ek = reconcile::engine_key(k);
                let labels = if k.identity == 0 {
                    "ANY".to_string()
                } else {
                    st.engine
                        .identities()
                        .get(k.identity)
                        .map(|i| {
                            i.labels
                                .iter()
                                .map(|l| l.to_string())
                                .filter(|l| !l.starts_with("k8s:io.cilium.k8s.namespace.labels"))
                                .collect::<Vec<_>>()
                                .join(" ")
                        })
                        .unwrap_or_else(|| format!("identity {}", k.identity))
                };
                let rules: Vec<String> = match map.and_then(|m| m.entries.get(&ek)) {
                    Some(e) if !e.derived_from.is_empty() => {
                        e.derived_from.iter().map(|r| r.to_string()).collect()
                    }
                    Some(_) => vec!["default allow (no default deny in this direction)".into()],
                    None => attr
                        .cookies
                        .get(&v.cookie)
                        .map(|r| vec![r.to_string()])
                        .unwrap_or_default(),
                };
                BpfPolicyRow {
                    policy: if v.deny {
                        "Deny".into()
                    } else if v.proxy_port != 0 {
                        "Redirect".into()
                    } else {
                        "Allow".into()
                    },
                    direction: match k.direction {
                        palisade_datapath::Direction::Ingress => "Ingress".into(),
                        palisade_datapath::Direction::Egress => "Egress".into(),
                    },
                    identity: k.identity,
                    labels,
                    port: ek.port_text(),
                    proxy_port: v.proxy_port,
                    precedence: v.precedence,
                    cookie: v.cookie,
                    rules,
                }
            })
            .collect();
        let counters = st
            .datapath
            .counters(rec.ep_id)
            .map(|c| {
                c.entries
                    .iter()
                    .map(|e| {
                        format!(
                            "{:?} {:?}{}: {} packets, {} bytes",
                            e.direction,
                            e.verdict,
                            if e.reason != 0 {
                                format!(" (reason {})", e.reason)
                            } else {
                                String::new()
                            },
                            e.packets,
                            e.bytes
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(BpfPolicy {
            endpoint: rec.ep_id,
            pod: key.to_string(),
            entries,
            in_sync,
            counters,
        })
    }

    fn netns_of(&self, key: &str) -> Result<String> {
        let st = self.lock();
        st.pods
            .get(key)
            .map(|r| r.netns.clone())
            .ok_or_else(|| AgentError::NotFound(format!("pod {key}")))
    }

    pub(crate) fn handle(&self, req: Request) -> Response {
        fn reply<T: serde::Serialize>(r: Result<T>) -> Response {
            match r {
                Ok(v) => Response::ok(&v),
                Err(e) => {
                    let d = e.diagnostics().to_vec();
                    Response::err(e.to_string(), d)
                }
            }
        }
        match req {
            Request::Status => Response::ok(&self.status()),
            Request::EndpointList => Response::ok(&self.endpoint_list()),
            Request::BpfPolicyGet { pod } => reply(self.bpf_policy(&pod)),
            Request::PolicyApply { files } => reply(self.apply(&files)),
            Request::PolicyDelete { files } => reply(self.delete(&files)),
            Request::PodRun(spec) => reply(self.run_pod(spec)),
            Request::PodDelete { pod } => reply(self.delete_pod(&pod)),
            Request::PodList => Response::ok(&self.pod_list()),
            Request::PodNetns { pod } => reply(self.netns_of(&pod)),
            Request::Events { since } => Response::ok(&self.events_since(since)),
            Request::Flows { since, last } => Response::ok(&self.flows.page(since, last)),
            Request::FqdnCacheList => reply(self.fqdn_cache_list()),
        }
    }

    pub(crate) fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// Makes a directory (and parents) private to root.
pub(crate) fn private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| AgentError::io(format!("creating {}", dir.display()), e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| AgentError::io(format!("chmod {}", dir.display()), e))
}

pub(crate) type AgentShared = Shared;

/// The DNS and Kafka proxies the agent runs next to the HTTP proxy, and
/// when each needs the next policy.
#[derive(Default)]
struct L7Extra {
    dns: Option<palisade_proxy::dns::DnsProxy>,
    kafka: Option<palisade_proxy::kafka::KafkaProxy>,
    dns_gate: FeedGate,
    kafka_gate: FeedGate,
}

/// An in-process proxy fed whole engines (the DNS and Kafka proxies).
trait FedProxy {
    /// Hands it a new policy; returns the policy's revision.
    fn update_engine(&self, engine: Engine) -> u64;
    /// The revision whose redirect rules it has installed.
    fn redirect_revision(&self) -> u64;
}

impl FedProxy for palisade_proxy::dns::DnsProxy {
    fn update_engine(&self, engine: Engine) -> u64 {
        palisade_proxy::dns::DnsProxy::update_engine(self, engine)
    }
    fn redirect_revision(&self) -> u64 {
        palisade_proxy::dns::DnsProxy::redirect_revision(self)
    }
}

impl FedProxy for palisade_proxy::kafka::KafkaProxy {
    fn update_engine(&self, engine: Engine) -> u64 {
        palisade_proxy::kafka::KafkaProxy::update_engine(self, engine)
    }
    fn redirect_revision(&self) -> u64 {
        palisade_proxy::kafka::KafkaProxy::redirect_revision(self)
    }
}

/// What set off a reconciliation: it bounds how long the proxies are
/// waited for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trigger {
    /// A policy, pod or namespace change: `policy apply` returns once the
    /// proxies enforce it.
    Policy,
    /// A name the DNS proxy learned or forgot: a client connects right
    /// after the DNS answer, which the DNS proxy holds meanwhile, so the
    /// HTTP proxy must know the name's identity by then (short bound); the
    /// DNS proxy itself may be the caller, so it is not waited for.
    LearnedName,
}

impl Trigger {
    fn proxy_wait(self) -> Duration {
        match self {
            Trigger::Policy => Duration::from_secs(3),
            Trigger::LearnedName => Duration::from_millis(500),
        }
    }
}

/// The DNS proxy's learning hook: learned names go into both engines
/// (enforced and full), the datapath is reconciled, and only then does the
/// future resolve (the proxy releases the answer after it, bounded by
/// `max_delay`). Runs on a blocking thread, never on the proxy's runtime.
struct AgentFqdnHook {
    shared: std::sync::Weak<Shared>,
}

impl palisade_proxy::dns::FqdnHook for AgentFqdnHook {
    fn learn(&self, update: palisade_proxy::dns::FqdnUpdate) -> palisade_proxy::dns::HookFuture {
        let w = self.shared.clone();
        Box::pin(async move {
            let _ = tokio::task::spawn_blocking(move || {
                if let Some(s) = w.upgrade() {
                    s.learn_fqdns(&update.names, &update.ips);
                }
            })
            .await;
        })
    }

    fn forget(&self, ips: Vec<std::net::IpAddr>) {
        let w = self.shared.clone();
        // Not on the caller's thread: it may hold the cache's lock, which
        // a reconciliation (holding the state lock) reads.
        let _ = std::thread::Builder::new()
            .name("palisade-fqdn-forget".into())
            .spawn(move || {
                if let Some(s) = w.upgrade() {
                    s.forget_fqdns(&ips);
                }
            });
    }
}

impl Shared {
    /// Starts the DNS and Kafka proxies in the node namespace (no-op when
    /// they run). Their records become L7 flows.
    fn start_l7_extra(self: &Arc<Shared>) -> Result<()> {
        let mut extra = self.l7_extra.lock().unwrap_or_else(|p| p.into_inner());
        if extra.dns.is_some() {
            return Ok(());
        }
        let engine = self.lock().engine.clone();
        let metric = |hub: &FlowHub, protocol: &str, verdict: palisade_proxy::L7Verdict| {
            hub.metrics()
                .proxy_requests
                .get_or_create(&palisade_flow::metrics::ProxyLabels {
                    protocol: protocol.into(),
                    verdict: format!("{verdict:?}").to_ascii_uppercase(),
                })
                .inc();
        };
        let (hub, node, me) = (
            self.flows.clone(),
            self.config.node_name.clone(),
            Arc::downgrade(self),
        );
        let dns = palisade_proxy::dns::DnsProxy::spawn(palisade_proxy::dns::DnsProxyOptions {
            config: palisade_proxy::dns::DnsConfig {
                max_delay: Duration::from_millis(500),
                ..Default::default()
            },
            netns: Some(self.config.node_netns.clone()),
            workers: Some(2),
            policy: palisade_proxy::PolicySnapshot::new(engine.clone(), 1),
            hook: Arc::new(AgentFqdnHook {
                shared: Arc::downgrade(self),
            }),
            sink: palisade_proxy::dns::Sink::callback(move |r: palisade_proxy::dns::DnsRecord| {
                metric(&hub, "dns", r.verdict);
                hub.metrics()
                    .dns_queries
                    .get_or_create(&palisade_flow::metrics::ProxyLabels {
                        protocol: "dns".into(),
                        verdict: format!("{:?}", r.verdict).to_ascii_uppercase(),
                    })
                    .inc();
                if let Some(me) = me.upgrade() {
                    me.push_l7_flow(crate::flows::flow_of_dns(&r, &node));
                }
            }),
        })
        .map_err(|e| AgentError::Conflict(format!("starting the DNS proxy: {e}")))?;
        let (hub, node, me) = (
            self.flows.clone(),
            self.config.node_name.clone(),
            Arc::downgrade(self),
        );
        let kafka =
            palisade_proxy::kafka::KafkaProxy::spawn(palisade_proxy::kafka::KafkaProxyOptions {
                config: Default::default(),
                netns: Some(self.config.node_netns.clone()),
                workers: Some(1),
                policy: palisade_proxy::PolicySnapshot::new(engine, 1),
                sink: palisade_proxy::dns::Sink::callback(
                    move |r: palisade_proxy::kafka::KafkaRecord| {
                        metric(&hub, "kafka", r.verdict);
                        if let Some(me) = me.upgrade() {
                            me.push_l7_flow(crate::flows::flow_of_kafka(&r, &node));
                        }
                    },
                ),
            })
            .map_err(|e| AgentError::Conflict(format!("starting the Kafka proxy: {e}")))?;
        tracing::info!(dns = %dns.local_addr(), kafka = %kafka.local_addr(), "DNS and Kafka proxies running in the node namespace");
        *extra = L7Extra {
            dns: Some(dns),
            kafka: Some(kafka),
            ..Default::default()
        };
        Ok(())
    }

    fn stop_l7_extra(&self) {
        let mut extra = self.l7_extra.lock().unwrap_or_else(|p| p.into_inner());
        extra.dns.take();
        extra.kafka.take();
    }

    /// Feeds the DNS and Kafka proxies the enforced policy when they need
    /// it; after a policy change, waits until their redirect sets are
    /// installed (bounded).
    fn feed_l7_extra(&self, engine: &Engine, trigger: Trigger) {
        use palisade_policy::api::L7Kind;
        let mut extra = self.l7_extra.lock().unwrap_or_else(|p| p.into_inner());
        let L7Extra {
            dns,
            kafka,
            dns_gate,
            kafka_gate,
        } = &mut *extra;
        let proxies: [(&str, Option<&dyn FedProxy>, L7Kind, &mut FeedGate); 2] = [
            ("DNS", dns.as_ref().map(|d| d as _), L7Kind::Dns, dns_gate),
            (
                "Kafka",
                kafka.as_ref().map(|k| k as _),
                L7Kind::Kafka,
                kafka_gate,
            ),
        ];
        let mut fed = Vec::new();
        for (name, proxy, kind, gate) in proxies {
            let Some(proxy) = proxy else { continue };
            let redirects = !palisade_proxy::dns::redirect::targets_in(engine, kind).is_empty();
            if gate.needs(redirects) {
                let rev = proxy.update_engine(engine.clone());
                fed.push((name, proxy, rev, redirects, gate));
            }
        }
        let behind = |p: &dyn FedProxy, rev: u64| p.redirect_revision() < rev;
        if trigger == Trigger::Policy {
            let deadline = Instant::now() + Duration::from_secs(2);
            while fed.iter().any(|(_, p, rev, _, _)| behind(*p, *rev)) && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        for (name, proxy, rev, redirects, gate) in fed {
            let lagging = behind(proxy, rev);
            if lagging && trigger == Trigger::Policy {
                tracing::warn!(
                    proxy = name,
                    "the proxy's redirect rules lag behind the policy"
                );
            }
            gate.fed(redirects, !lagging);
        }
    }

    /// Re-learns every name in the DNS proxy's cache into freshly built
    /// engines (no-op for names they already know).
    fn replay_learned_fqdns(&self, st: &mut State) {
        let rows = {
            let extra = self.l7_extra.lock().unwrap_or_else(|p| p.into_inner());
            match &extra.dns {
                Some(d) => d.cache().list(),
                None => return,
            }
        };
        for row in rows {
            for ip in &row.ips {
                st.engine.learn_fqdn(&row.fqdn, *ip);
                if let Some(f) = st.full.as_mut() {
                    f.learn_fqdn(&row.fqdn, *ip);
                }
            }
        }
    }

    /// The hook's work: learn into both engines and write the deltas to the
    /// datapath now.
    fn learn_fqdns(&self, names: &[String], ips: &[std::net::IpAddr]) {
        let mut st = self.lock();
        for ip in ips {
            for name in names {
                st.engine.learn_fqdn(name, *ip);
                if let Some(f) = st.full.as_mut() {
                    f.learn_fqdn(name, *ip);
                }
            }
        }
        self.reconcile_all(&mut st, Trigger::LearnedName);
    }

    fn forget_fqdns(&self, ips: &[std::net::IpAddr]) {
        let mut st = self.lock();
        for ip in ips {
            st.engine.forget_fqdn(*ip);
            if let Some(f) = st.full.as_mut() {
                f.forget_fqdn(*ip);
            }
        }
        self.reconcile_all(&mut st, Trigger::LearnedName);
    }

    /// `fqdn-cache-list`: the DNS proxy's cache rows.
    fn fqdn_cache_list(&self) -> Result<Vec<palisade_proxy::dns::CacheRow>> {
        let extra = self.l7_extra.lock().unwrap_or_else(|p| p.into_inner());
        match &extra.dns {
            Some(d) => Ok(d.cache().list()),
            None => Err(AgentError::NotFound(
                "the DNS proxy is not running (the agent was started with --no-l7-proxy)".into(),
            )),
        }
    }
}
