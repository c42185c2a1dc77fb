//! Flows from the datapath: every policy verdict and drop event the agent
//! reads becomes a Hubble-shaped flow (peers with pod, labels and identity
//! from the engine; attribution from the cookie table, or the selecting
//! policies for default deny), kept in a bounded [`FlowRing`] and counted in
//! [`Metrics`]. Overwritten flows are counted too (never silent).
//!
//! Audit mode: the datapath enforces the policy set without audited
//! policies; a new connection the datapath forwards but the full policy set
//! denies becomes an `AUDIT` flow.
//!
//! The web endpoints of `palisade_flow::web` (service map, `/api/flows`,
//! `/metrics`) are served from here on a TCP address (loopback by default).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_datapath::{DatapathEvent, Direction as DpDirection, Verdict as DpVerdict};
use palisade_flow::flow::{Flow, FlowType, FlowsResponse, TrafficDirection, Verdict};
use palisade_flow::metrics::{DropLabels, FlowLabels, Metrics, SourceLabels};
use palisade_flow::record::{Attribution, Peer, VerdictEvent};
use palisade_flow::ring::FlowRing;
use palisade_flow::web::FlowSource;
use palisade_policy::api::{Direction, PolicyId};
use palisade_policy::engine::Engine;
use palisade_policy::mapstate::{PolicyMap, RuleRef};
use serde::{Deserialize, Serialize};

/// Default capacity of the ring of recent flows.
pub const DEFAULT_FLOW_RING_CAPACITY: usize = 65_536;
/// Default address of the web endpoints (loopback only).
pub const DEFAULT_WEB_LISTEN: &str = "127.0.0.1:9962";

/// Adds one to a counter of one label set.
type Inc = Box<dyn Fn() + Send + Sync>;

/// The ring and the counters of the label sets seen so far: counting a
/// flow then neither allocates label strings nor hashes them (the event
/// reader pushes a flow per datapath event, at 100,000 events/s and more).
struct Inner {
    ring: FlowRing,
    /// `flows_processed` by (verdict, type).
    flows: Vec<(Verdict, FlowType, Inc)>,
    /// `drop_count` by (reason, direction).
    drops: Vec<(String, TrafficDirection, Inc)>,
    /// `lost_events{source="HUBBLE_RING_BUFFER"}`.
    overwritten: Inc,
}

/// The ring of recent flows and the metrics, shared by the event reader,
/// the API and the web server.
pub struct FlowHub {
    ring: Mutex<Inner>,
    metrics: Metrics,
    title: String,
    /// The kernel's lost-events total last accounted for.
    kernel_lost_seen: Mutex<u64>,
}

impl std::fmt::Debug for FlowHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowHub").finish_non_exhaustive()
    }
}

/// A page of flows (`{"op":"flows"}`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowsPage {
    /// Flows (and `lost_events` records when the reader fell behind), oldest first.
    pub flows: Vec<FlowsResponse>,
    /// The sequence number to ask for next (`since`).
    pub next: u64,
    /// Flows overwritten in the ring since the agent started.
    pub overwritten: u64,
}

impl FlowHub {
    /// A hub with a ring of `capacity` flows.
    pub fn new(capacity: usize, node_name: &str) -> Self {
        let metrics = Metrics::new();
        let overwritten = metrics
            .lost_events
            .get_or_create(&SourceLabels {
                source: "HUBBLE_RING_BUFFER".into(),
            })
            .clone();
        FlowHub {
            ring: Mutex::new(Inner {
                ring: FlowRing::new(capacity),
                flows: Vec::new(),
                drops: Vec::new(),
                overwritten: Box::new(move || {
                    overwritten.inc();
                }),
            }),
            metrics,
            title: format!("Palisade service map: node {node_name}"),
            kernel_lost_seen: Mutex::new(0),
        }
    }

    /// Accounts for events the kernel could not put in its ring buffer:
    /// given the kernel's running total, the increase is counted in
    /// `lost_events{source="PERF_EVENT_RING_BUFFER"}` and a `lost_events`
    /// record joins the flow stream, so no loss is silent.
    pub fn kernel_lost(&self, total: u64) {
        let mut seen = self
            .kernel_lost_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if total <= *seen {
            return;
        }
        let delta = total - *seen;
        *seen = total;
        drop(seen);
        self.lost("PERF_EVENT_RING_BUFFER", delta);
    }

    /// The kernel's loss total already reported.
    pub fn kernel_lost_reported(&self) -> u64 {
        *self
            .kernel_lost_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Starts from a total an earlier agent already reported (the pinned
    /// counter outlives agents), so no loss is reported twice.
    pub fn set_kernel_lost_baseline(&self, total: u64) {
        *self
            .kernel_lost_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = total;
    }

    /// Accounts for `n` events lost at `source` (Hubble's `LostEventSource`
    /// name): counted in `lost_events{source}` and reported in the flow
    /// stream.
    pub fn lost(&self, source: &str, n: u64) {
        if n == 0 {
            return;
        }
        self.metrics
            .lost_events
            .get_or_create(&SourceLabels {
                source: source.into(),
            })
            .inc_by(n);
        let mut inner = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        inner.ring.push(FlowsResponse {
            lost_events: Some(palisade_flow::flow::LostEvent {
                source: source.into(),
                num_events_lost: n.to_string(),
                cpu: None,
            }),
            ..Default::default()
        });
    }

    /// The metrics (for counters kept elsewhere in the agent).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Counts and keeps one flow.
    pub fn push(&self, flow: Flow) {
        let mut inner = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *inner;
        let (verdict, flow_type) = (flow.verdict, flow.flow_type);
        match inner
            .flows
            .iter()
            .find(|(v, t, _)| *v == verdict && *t == flow_type)
        {
            Some((.., inc)) => inc(),
            None => {
                let ty = match flow_type {
                    FlowType::L7 => "L7",
                    FlowType::L3L4 => "L3_L4",
                    _ => "UNKNOWN",
                };
                let c = self
                    .metrics
                    .flows
                    .get_or_create(&FlowLabels {
                        verdict: verdict.as_str().into(),
                        r#type: ty.into(),
                    })
                    .clone();
                c.inc();
                inner.flows.push((
                    verdict,
                    flow_type,
                    Box::new(move || {
                        c.inc();
                    }),
                ));
            }
        }
        if verdict == Verdict::Dropped {
            let dir = flow.traffic_direction;
            match inner
                .drops
                .iter()
                .find(|(r, d, _)| *d == dir && *r == flow.drop_reason_desc)
            {
                Some((.., inc)) => inc(),
                None => {
                    let c = self
                        .metrics
                        .drops
                        .get_or_create(&DropLabels {
                            reason: flow.drop_reason_desc.clone(),
                            direction: format!("{dir:?}").to_ascii_uppercase(),
                        })
                        .clone();
                    c.inc();
                    inner.drops.push((
                        flow.drop_reason_desc.clone(),
                        dir,
                        Box::new(move || {
                            c.inc();
                        }),
                    ));
                }
            }
        }
        let resp = FlowsResponse {
            node_name: flow.node_name.clone(),
            time: flow.time.clone(),
            flow: Some(flow),
            ..Default::default()
        };
        let before = inner.ring.overwritten();
        inner.ring.push(resp);
        if inner.ring.overwritten() > before {
            (inner.overwritten)();
        }
    }

    /// Flows from sequence `since` on (a `lost_events` record first when
    /// some were overwritten), or the last `last` flows when `since` is
    /// `None`.
    pub fn page(&self, since: Option<u64>, last: Option<usize>) -> FlowsPage {
        let inner = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let ring = &inner.ring;
        let (mut flows, next) = match since {
            Some(s) => ring.since(s),
            None => (ring.last(last.unwrap_or(usize::MAX)), ring.next_seq()),
        };
        if let (Some(_), Some(n)) = (since, last) {
            let skip = flows.len().saturating_sub(n);
            flows.drain(..skip);
        }
        FlowsPage {
            flows,
            next,
            overwritten: ring.overwritten(),
        }
    }
}

impl FlowSource for FlowHub {
    fn flows(&self) -> Vec<FlowsResponse> {
        let inner = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        inner.ring.last(usize::MAX)
    }

    fn metrics(&self) -> String {
        self.metrics.encode()
    }

    fn title(&self) -> String {
        self.title.clone()
    }
}

/// What the agent knows about a local pod, for flow peers.
#[derive(Clone, Debug, Default)]
pub(crate) struct PodPeer {
    pub namespace: String,
    pub name: String,
    pub ep_id: u32,
}

/// The tables that turn datapath events into attributed flows; rebuilt on
/// every reconciliation.
#[derive(Default)]
pub(crate) struct PeerBook {
    pub pods_by_ip: BTreeMap<Ipv4Addr, PodPeer>,
    pub identity_labels: BTreeMap<u32, Vec<String>>,
    /// ep_id -> (ingress, egress) selecting policies.
    pub selected_by: BTreeMap<u32, (Vec<PolicyId>, Vec<PolicyId>)>,
    /// ep_id -> the endpoint's map in the full view (audit mode only:
    /// present when some policy is audited).
    pub audit_maps: BTreeMap<u32, PolicyMap>,
    /// The full view's ipcache (audit mode only): CIDR and FQDN identities
    /// are node-local numbers each view allocates for itself, so an
    /// address's identity in the full view is looked up, not assumed.
    pub audit_ipcache: Option<palisade_policy::ipcache::IpCache>,
}

/// An identity's labels as flows and `endpoint list` show them (the
/// namespace's own labels left out, as Hubble does).
pub(crate) fn label_strings(engine: &Engine, id: u32) -> Vec<String> {
    engine
        .identities()
        .get(id)
        .map(|i| {
            i.labels
                .iter()
                .map(|l| l.to_string())
                .filter(|l| !l.starts_with("k8s:io.cilium.k8s.namespace.labels"))
                .collect()
        })
        .unwrap_or_default()
}

impl PeerBook {
    /// Builds the tables from the enforced engine (and the full engine in
    /// audit mode) for the local pods `(key, ip, ep_id)`.
    pub fn build(
        engine: &Engine,
        full: Option<&Engine>,
        pods: impl Iterator<Item = (String, Ipv4Addr, u32)>,
    ) -> Self {
        let mut book = PeerBook {
            audit_ipcache: full.map(|f| f.ipcache().clone()),
            ..PeerBook::default()
        };
        for i in engine.identities().iter() {
            book.identity_labels
                .insert(i.id, label_strings(engine, i.id));
        }
        for (key, ip, ep_id) in pods {
            book.set_pod(engine, full, &key, ip, ep_id);
        }
        book
    }

    /// Updates the tables after an incremental change: the labels of
    /// `identities` (added, or dropped when the engine no longer has
    /// them) and the local pods `pods` (selecting policies, audit maps);
    /// everything else stays as it is.
    pub fn update(
        &mut self,
        engine: &Engine,
        full: Option<&Engine>,
        identities: impl IntoIterator<Item = u32>,
        pods: impl Iterator<Item = (String, Ipv4Addr, u32)>,
    ) {
        for id in identities {
            if engine.identities().get(id).is_some() {
                self.identity_labels.insert(id, label_strings(engine, id));
            } else {
                self.identity_labels.remove(&id);
            }
        }
        for (key, ip, ep_id) in pods {
            self.set_pod(engine, full, &key, ip, ep_id);
        }
        self.audit_ipcache = full.map(|f| f.ipcache().clone());
    }

    /// The identity of the remote end of `ev` in the full (audit) view.
    fn audit_remote_identity(&self, ev: &DatapathEvent) -> u32 {
        use palisade_policy::identity as id;
        let r = ev.remote_identity;
        let ipcache_derived = r & id::LOCAL_FLAG != 0 || matches!(r, id::WORLD | id::WORLD_IPV4);
        match &self.audit_ipcache {
            Some(c) if ipcache_derived => {
                let ip = if ev.direction == DpDirection::Ingress {
                    ev.saddr
                } else {
                    ev.daddr
                };
                c.lookup(IpAddr::V4(ip)).0
            }
            _ => r,
        }
    }

    /// Completes an L7 flow from a proxy with what the datapath's flows
    /// carry: the endpoint ids of local pods and the identities' labels.
    pub fn complete_l7(&self, f: &mut Flow) {
        let ips =
            f.ip.as_ref()
                .map(|i| (i.source.clone(), i.destination.clone()));
        let Some((src, dst)) = ips else { return };
        for (ep, ip) in [(f.source.as_mut(), src), (f.destination.as_mut(), dst)] {
            let Some(ep) = ep else { continue };
            if let Ok(ip) = ip.parse::<Ipv4Addr>()
                && let Some(p) = self.pods_by_ip.get(&ip)
            {
                ep.id = p.ep_id;
            }
            if let Some(l) = self.identity_labels.get(&ep.identity) {
                ep.labels = l.clone();
            }
        }
    }

    fn set_pod(
        &mut self,
        engine: &Engine,
        full: Option<&Engine>,
        key: &str,
        ip: Ipv4Addr,
        ep_id: u32,
    ) {
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        self.pods_by_ip.insert(
            ip,
            PodPeer {
                namespace: ns.to_string(),
                name: name.to_string(),
                ep_id,
            },
        );
        let sel = |m: Option<&PolicyMap>, d: Direction| {
            m.map(|m| m.enforcement(d).selected_by.iter().cloned().collect())
                .unwrap_or_default()
        };
        let map = engine.endpoint_map(key);
        self.selected_by.insert(
            ep_id,
            (sel(map, Direction::Ingress), sel(map, Direction::Egress)),
        );
        match full.and_then(|f| f.endpoint_map(key)) {
            Some(m) => {
                self.audit_maps.insert(ep_id, m.clone());
            }
            None => {
                self.audit_maps.remove(&ep_id);
            }
        }
    }

    fn peer(&self, ip: Ipv4Addr, port: u16, identity: u32) -> Peer {
        let pod = self.pods_by_ip.get(&ip);
        Peer {
            ip: Some(IpAddr::V4(ip)),
            port,
            identity,
            labels: self
                .identity_labels
                .get(&identity)
                .cloned()
                .unwrap_or_default(),
            namespace: pod.map(|p| p.namespace.clone()).unwrap_or_default(),
            pod_name: pod.map(|p| p.name.clone()).unwrap_or_default(),
            endpoint_id: pod.map_or(0, |p| p.ep_id),
            names: vec![],
        }
    }

    /// The verdict event of a datapath event, with attribution. In audit
    /// mode, a new connection that the full view denies becomes `AUDIT`.
    pub fn verdict_event(
        &self,
        ev: &DatapathEvent,
        cookies: &BTreeMap<u32, RuleRef>,
        node_name: &str,
        time_ns: u128,
    ) -> VerdictEvent {
        let ingress = ev.direction == DpDirection::Ingress;
        let dir = if ingress {
            Direction::Ingress
        } else {
            Direction::Egress
        };
        let (src_id, dst_id) = if ingress {
            (ev.remote_identity, ev.local_identity)
        } else {
            (ev.local_identity, ev.remote_identity)
        };
        let icmp = ev.proto == 1;
        let mut out = VerdictEvent {
            time_ns,
            node_name: node_name.to_string(),
            source: self.peer(ev.saddr, if icmp { 0 } else { ev.sport }, src_id),
            destination: self.peer(ev.daddr, if icmp { 0 } else { ev.dport }, dst_id),
            protocol: ev.proto,
            icmp_type: if icmp { ev.dport as u8 } else { 0 },
            tcp_flags: ev.tcp_flags,
            ingress,
            verdict: match ev.verdict {
                DpVerdict::Forwarded => Verdict::Forwarded,
                DpVerdict::Dropped => Verdict::Dropped,
                DpVerdict::Redirected => Verdict::Redirected,
                DpVerdict::Other(_) => Verdict::VerdictUnknown,
            },
            drop_reason: u32::from(ev.drop_reason),
            match_type: {
                use palisade_datapath::MatchType as M;
                match ev.match_type {
                    M::None => 0,
                    M::L3Only => 1,
                    M::L3L4 => 2,
                    M::L4Only => 3,
                    M::All => 4,
                    M::L3Proto => 5,
                    M::ProtoOnly => 6,
                    M::Other(o) => u32::from(o),
                }
            },
            proxy_port: ev.proxy_port,
            is_reply: matches!(ev.ct_state, palisade_datapath::conntrack::CtState::Reply),
            attribution: Attribution::default(),
        };
        let selected = || {
            self.selected_by
                .get(&ev.ep_id)
                .map(|(i, e)| if ingress { i.clone() } else { e.clone() })
                .unwrap_or_default()
        };
        if ev.verdict == DpVerdict::Dropped && ev.drop_reason == palisade_datapath::DROP_POLICY {
            let sel = selected();
            out.attribution.explanation = if sel.is_empty() {
                "default deny (no policy selects the endpoint in this direction)".into()
            } else {
                "default deny: no rule allows this traffic".into()
            };
            out.attribution.default_deny_selected_by = sel;
        } else if ev.cookie != 0 {
            match cookies.get(&ev.cookie) {
                Some(r) => out.attribution.rules = vec![r.clone()],
                None => {
                    out.attribution.explanation = format!("cookie {:#x} (unknown rule)", ev.cookie)
                }
            }
        } else if ev.verdict == DpVerdict::Forwarded {
            out.attribution.explanation =
                "default allow (no default deny in this direction)".into();
        }
        // Audit: forwarded new connections the full policy set denies.
        if ev.verdict != DpVerdict::Dropped
            && matches!(ev.ct_state, palisade_datapath::conntrack::CtState::New)
            && let Some(full) = self.audit_maps.get(&ev.ep_id)
        {
            let d = full.lookup(self.audit_remote_identity(ev), dir, ev.proto, ev.dport);
            let full_denies =
                !d.allowed && (d.drop_reason == 181 || full.enforcement(dir).default_deny);
            if full_denies {
                out.verdict = Verdict::Audit;
                out.drop_reason = u32::from(d.drop_reason);
                out.match_type = u32::from(d.match_type);
                out.attribution = Attribution::default();
                match d.entry {
                    Some(e) => {
                        out.attribution.rules = e.derived_from.iter().cloned().collect();
                        out.attribution.explanation =
                            "audit: denied by a rule of an audited policy; delivered".into();
                    }
                    None => {
                        out.attribution.default_deny_selected_by =
                            full.enforcement(dir).selected_by.iter().cloned().collect();
                        out.attribution.explanation =
                            "audit: default deny of an audited policy; delivered".into();
                    }
                }
            }
        }
        out
    }
}

/// Wall-clock ns of a `CLOCK_MONOTONIC` timestamp.
pub(crate) fn wall_ns(monotonic_ns: u64) -> u128 {
    let now_wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let now_mono = u128::from(palisade_datapath::conntrack::monotonic_now_ns());
    now_wall.saturating_sub(now_mono.saturating_sub(u128::from(monotonic_ns)))
}

/// The L7 flow of a proxy record (HTTP request/response pair).
pub fn flow_of_l7(r: &palisade_proxy::L7Record, node_name: &str) -> Flow {
    use palisade_flow::flow::{Http, L7FlowType, Layer7};
    let explanation = if r.rules.is_empty() && r.verdict == palisade_proxy::L7Verdict::Dropped {
        "no L7 rule allows this request"
    } else {
        ""
    };
    let mut f = l7_base_flow(
        r.time,
        &r.source,
        &r.destination,
        r.direction,
        r.verdict,
        &r.rules,
        explanation,
        6,
        node_name,
    );
    f.l7 = Some(Layer7 {
        l7_type: if r.status.is_some() {
            L7FlowType::Response
        } else {
            L7FlowType::Request
        },
        latency_ns: r.latency_ns.to_string(),
        http: Some(Http {
            code: r.status.map_or(0, u32::from),
            method: r.method.clone(),
            url: r.url.clone(),
            protocol: r.protocol.to_string(),
            headers: vec![],
        }),
        ..Default::default()
    });
    f.summary = palisade_flow::record::summary(&f);
    f
}

/// Binds the web endpoints' address. Non-loopback addresses are allowed
/// only when asked for explicitly (the default is loopback).
pub(crate) fn bind_web(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the flow web endpoints listen on a non-loopback address");
    }
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Serves `palisade_flow::web::router` until `stop` is set.
pub(crate) fn serve_web(
    listener: std::net::TcpListener,
    hub: Arc<FlowHub>,
    stop: impl Fn() -> bool + Send + 'static,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "web endpoints: no runtime");
            return;
        }
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "web endpoints: listener");
                return;
            }
        };
        let app = palisade_flow::web::router(hub);
        let shutdown = async move {
            while !stop() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "web endpoints");
        }
    });
}

/// The flow of one L7 decision (shared by the HTTP, DNS and Kafka
/// records): the peers, verdict and deciding rules; the caller fills `l7`.
#[allow(clippy::too_many_arguments)]
fn l7_base_flow(
    time: std::time::SystemTime,
    source: &palisade_proxy::L7Peer,
    destination: &palisade_proxy::L7Peer,
    direction: Option<Direction>,
    verdict: palisade_proxy::L7Verdict,
    rules: &[RuleRef],
    explanation: &str,
    protocol: u8,
    node_name: &str,
) -> Flow {
    let peer = |p: &palisade_proxy::L7Peer| {
        let (namespace, pod_name) = p
            .endpoint
            .as_deref()
            .and_then(|k| k.split_once('/'))
            .map(|(n, p)| (n.to_string(), p.to_string()))
            .unwrap_or_default();
        Peer {
            ip: Some(p.ip),
            port: p.port,
            identity: p.identity,
            labels: p.labels.iter().cloned().collect(),
            namespace,
            pod_name,
            endpoint_id: 0,
            names: vec![],
        }
    };
    let verdict = match verdict {
        palisade_proxy::L7Verdict::Forwarded => Verdict::Forwarded,
        palisade_proxy::L7Verdict::Dropped => Verdict::Dropped,
        palisade_proxy::L7Verdict::Error => Verdict::Error,
    };
    let ev = VerdictEvent {
        time_ns: time
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
        node_name: node_name.to_string(),
        source: peer(source),
        destination: peer(destination),
        protocol,
        ingress: direction != Some(Direction::Egress),
        verdict,
        drop_reason: if verdict == Verdict::Dropped { 181 } else { 0 },
        attribution: Attribution {
            rules: rules.to_vec(),
            default_deny_selected_by: vec![],
            explanation: explanation.to_string(),
        },
        ..Default::default()
    };
    let mut f = ev.into_flow();
    f.flow_type = FlowType::L7;
    // An L7 flow is about a request, not a packet: no TCP flags.
    if let Some(tcp) = f.l4.as_mut().and_then(|l| l.tcp.as_mut()) {
        tcp.flags = None;
    }
    if verdict == Verdict::Dropped {
        f.drop_reason_desc = "POLICY_DENIED".into();
    }
    f
}

fn rcode_number(name: &str) -> u32 {
    match name {
        "FormErr" => 1,
        "ServFail" => 2,
        "NXDomain" => 3,
        "NotImp" => 4,
        "Refused" => 5,
        other => other
            .strip_prefix("RCODE")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
    }
}

/// The flow of one DNS proxy record (`l7.dns`).
pub fn flow_of_dns(r: &palisade_proxy::dns::DnsRecord, node_name: &str) -> Flow {
    use palisade_flow::flow::{Dns, L7FlowType, Layer7};
    let mut f = l7_base_flow(
        r.time,
        &r.source,
        &r.destination,
        r.direction,
        r.verdict,
        &r.rules,
        &r.explanation,
        if r.transport == "TCP" { 6 } else { 17 },
        node_name,
    );
    f.l7 = Some(Layer7 {
        l7_type: if r.rcode.is_some() {
            L7FlowType::Response
        } else {
            L7FlowType::Request
        },
        latency_ns: r.latency_ns.to_string(),
        dns: Some(Dns {
            query: r.query.clone(),
            ips: r.ips.iter().map(|i| i.to_string()).collect(),
            ttl: r.ttl,
            cnames: r.cnames.clone(),
            rcode: r.rcode.as_deref().map_or(0, rcode_number),
            qtypes: r.qtypes.clone(),
            rrtypes: r.rrtypes.clone(),
        }),
        ..Default::default()
    });
    f.summary = palisade_flow::record::summary(&f);
    f
}

/// The flow of one Kafka proxy record (`l7.kafka`).
pub fn flow_of_kafka(r: &palisade_proxy::kafka::KafkaRecord, node_name: &str) -> Flow {
    use palisade_flow::flow::{Kafka, L7FlowType, Layer7};
    let mut f = l7_base_flow(
        r.time,
        &r.source,
        &r.destination,
        r.direction,
        r.verdict,
        &r.rules,
        &r.explanation,
        6,
        node_name,
    );
    f.l7 = Some(Layer7 {
        l7_type: L7FlowType::Request,
        kafka: Some(Kafka {
            error_code: r.error_code.map_or(0, i32::from),
            api_version: i32::from(r.api_version),
            api_key: r.api_key.clone(),
            correlation_id: r.correlation_id,
            topic: r.topics.join(","),
        }),
        ..Default::default()
    });
    f.summary = palisade_flow::record::summary(&f);
    f
}

#[cfg(test)]
mod kernel_lost_tests {
    use super::*;

    #[test]
    fn kernel_losses_are_counted_and_reported_in_the_stream() {
        let hub = FlowHub::new(16, "node-1");
        hub.kernel_lost(0);
        assert!(hub.page(Some(0), None).flows.is_empty());
        hub.kernel_lost(5);
        hub.kernel_lost(5);
        hub.kernel_lost(7);
        let page = hub.page(Some(0), None);
        let lost: Vec<&str> = page
            .flows
            .iter()
            .filter_map(|r| r.lost_events.as_ref())
            .map(|l| l.num_events_lost.as_str())
            .collect();
        assert_eq!(lost, vec!["5", "2"]);
        // A restarted agent starts from what was reported before.
        let next = FlowHub::new(16, "node-1");
        next.set_kernel_lost_baseline(hub.kernel_lost_reported());
        next.kernel_lost(7);
        next.kernel_lost(10);
        let lost: Vec<String> = next
            .page(Some(0), None)
            .flows
            .iter()
            .filter_map(|r| r.lost_events.as_ref())
            .map(|l| l.num_events_lost.clone())
            .collect();
        assert_eq!(lost, vec!["3"]);
        let text = hub.metrics().encode();
        assert!(
            text.contains("palisade_lost_events_total{source=\"PERF_EVENT_RING_BUFFER\"} 7"),
            "{text}"
        );
    }
}

#[cfg(test)]
mod push_tests {
    use super::*;

    fn flow(verdict: Verdict, ty: FlowType, dir: TrafficDirection, reason: &str) -> Flow {
        Flow {
            verdict,
            flow_type: ty,
            traffic_direction: dir,
            drop_reason_desc: reason.into(),
            ..Default::default()
        }
    }

    #[test]
    fn every_label_set_is_counted_and_overwrites_are_lost_events() {
        let hub = FlowHub::new(2, "node-1");
        let (i, e) = (TrafficDirection::Ingress, TrafficDirection::Egress);
        for _ in 0..3 {
            hub.push(flow(Verdict::Dropped, FlowType::L3L4, e, "POLICY_DENY"));
        }
        hub.push(flow(Verdict::Dropped, FlowType::L3L4, i, "POLICY_DENY"));
        hub.push(flow(Verdict::Dropped, FlowType::L3L4, e, "POLICY_DENIED"));
        hub.push(flow(Verdict::Forwarded, FlowType::L3L4, i, ""));
        hub.push(flow(Verdict::Dropped, FlowType::L7, i, "POLICY_DENIED"));
        let text = hub.metrics().encode();
        for line in [
            "palisade_flows_processed_total{verdict=\"DROPPED\",type=\"L3_L4\"} 5",
            "palisade_flows_processed_total{verdict=\"FORWARDED\",type=\"L3_L4\"} 1",
            "palisade_flows_processed_total{verdict=\"DROPPED\",type=\"L7\"} 1",
            "palisade_drop_count_total{reason=\"POLICY_DENY\",direction=\"EGRESS\"} 3",
            "palisade_drop_count_total{reason=\"POLICY_DENY\",direction=\"INGRESS\"} 1",
            "palisade_drop_count_total{reason=\"POLICY_DENIED\",direction=\"EGRESS\"} 1",
            "palisade_drop_count_total{reason=\"POLICY_DENIED\",direction=\"INGRESS\"} 1",
            "palisade_lost_events_total{source=\"HUBBLE_RING_BUFFER\"} 5",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(!text.contains("FORWARDED\",direction"), "{text}");
        let page = hub.page(Some(0), None);
        assert_eq!((page.next, page.overwritten), (7, 5));
    }
}

#[cfg(test)]
mod audit_tests {
    use super::*;
    use palisade_policy::manifest::{Object, Options, parse_file};

    const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: default}
---
apiVersion: v1
kind: Pod
metadata: {name: app, namespace: default, labels: {app: app}}
spec: {nodeName: node-1}
status: {podIP: 10.0.0.5}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: enforced-egress, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: other}}
  egress: [{toCIDR: [203.0.113.0/24]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: audited-egress
  namespace: default
  annotations: {palisade.io/audit: "true"}
spec:
  endpointSelector: {matchLabels: {app: app}}
  egress: [{toCIDR: [198.51.100.0/24, 192.0.2.0/24]}]
"#;

    fn engines() -> (Engine, Engine) {
        let objects: Vec<Object> = parse_file("c.yaml", CLUSTER, &Options::default())
            .into_iter()
            .map(|d| d.object.expect("valid"))
            .collect();
        let audited = palisade_policy::audit::audited_policies(&objects);
        let build = |o: Vec<Object>| {
            let mut e = Engine::new();
            e.set_local_node(Some("node-1".into()));
            e.apply_all(o);
            e
        };
        let enforced = build(palisade_policy::audit::enforced_objects(&objects, &audited));
        (enforced, build(objects))
    }

    fn egress_to(enforced: &Engine, daddr: Ipv4Addr) -> DatapathEvent {
        DatapathEvent {
            timestamp_ns: 0,
            ep_id: 1,
            ifindex: 9,
            local_identity: enforced.endpoint_identity("default/app").expect("endpoint"),
            remote_identity: enforced.identity_of_ip(IpAddr::V4(daddr), Some("node-1")),
            saddr: Ipv4Addr::new(10, 0, 0, 5),
            daddr,
            sport: 40000,
            dport: 443,
            proto: 6,
            direction: DpDirection::Egress,
            verdict: DpVerdict::Forwarded,
            drop_reason: 0,
            cookie: 0,
            match_type: palisade_datapath::MatchType::None,
            tcp_flags: 0x02,
            ct_state: palisade_datapath::conntrack::CtState::New,
            proxy_port: 0,
            pkt_len: 60,
        }
    }

    /// CIDR identities are numbers each view allocates for itself: the
    /// audit check looks the address up in the full view.
    #[test]
    fn audit_resolves_cidr_peers_in_the_full_view() {
        let (enforced, full) = engines();
        let book = PeerBook::build(
            &enforced,
            Some(&full),
            [("default/app".to_string(), Ipv4Addr::new(10, 0, 0, 5), 1)].into_iter(),
        );
        let verdict = |ip| {
            book.verdict_event(&egress_to(&enforced, ip), &BTreeMap::new(), "node-1", 0)
                .verdict
        };
        // The audited policy allows these CIDRs: delivered, not an audit.
        assert_eq!(verdict(Ipv4Addr::new(198, 51, 100, 7)), Verdict::Forwarded);
        assert_eq!(verdict(Ipv4Addr::new(192, 0, 2, 9)), Verdict::Forwarded);
        // Anything else is what the audited default deny would drop.
        assert_eq!(verdict(Ipv4Addr::new(203, 0, 113, 1)), Verdict::Audit);
        assert_eq!(verdict(Ipv4Addr::new(8, 8, 8, 8)), Verdict::Audit);
    }
}
