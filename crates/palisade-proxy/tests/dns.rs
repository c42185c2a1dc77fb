//! The DNS proxy end to end (root; unique namespaces removed on drop): a
//! real dnsmasq (Debian `dnsmasq-base`) in a pod, clients in other pods,
//! the proxy in the lab's node namespace behind the real TPROXY redirect
//! (UDP and TCP port 53), and the learning hook wired to an `Engine`.

use palisade_datapath::netns::{self, Pod};
use palisade_datapath::testenv::{TestEnv, wait_until};
use palisade_policy::api::Direction;
use palisade_policy::engine::Engine;
use palisade_proxy::L7Verdict;
use palisade_proxy::PolicyFeed;
use palisade_proxy::dns::wire::{self, Message, Rdata};
use palisade_proxy::dns::{
    DnsConfig, DnsProxy, DnsProxyOptions, DnsRecord, EngineHook, RejectCode, Sink,
};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {kubernetes.io/metadata.name: default}}
---
apiVersion: v1
kind: Namespace
metadata: {name: kube-system, labels: {kubernetes.io/metadata.name: kube-system}}
---
apiVersion: v1
kind: Pod
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec: {nodeName: node-1, containers: [{name: main, image: dns}]}
status: {podIP: @DNS@}
---
apiVersion: v1
kind: Pod
metadata: {name: crawler, namespace: default, labels: {app: crawler}}
spec: {nodeName: node-1, containers: [{name: main, image: app}]}
status: {podIP: @CRAWLER@}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: default, labels: {app: other}}
spec: {nodeName: node-1, containers: [{name: main, image: app}]}
status: {podIP: @OTHER@}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: crawler-egress, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: crawler}}
  egress:
    - toEndpoints:
        - matchLabels: {io.kubernetes.pod.namespace: kube-system, k8s-app: kube-dns}
      toPorts:
        - ports: [{port: "53", protocol: ANY}]
          rules:
            dns:
              - matchPattern: "*.example.com"
    - toFQDNs:
        - matchName: api.example.com
      toPorts:
        - ports: [{port: "443", protocol: TCP}]
    - toFQDNs:
        - matchPattern: "*.example.com"
"#;

const HOSTS: &str =
    "192.0.2.10 api.example.com\n192.0.2.11 www.example.com\n192.0.2.66 evil.example.net\n";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// dnsmasq in a pod, with its config in a temporary directory; killed and
/// removed on drop.
struct Dnsmasq {
    child: Child,
    dir: PathBuf,
}

impl Dnsmasq {
    fn start(ns: &str, ip: Ipv4Addr, hosts: &str, ttl: u32) -> Dnsmasq {
        let dir = std::env::temp_dir().join(format!(
            "palisade-dnsmasq-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("hosts"), hosts).expect("hosts");
        let conf = format!(
            "no-resolv\nno-hosts\nno-poll\nbind-interfaces\nlisten-address={ip}\nport=53\n\
addn-hosts={hosts}\nlocal-ttl={ttl}\ncname=alias.example.com,api.example.com\nuser=root\n\
pid-file={pid}\nlog-facility=-\n",
            hosts = dir.join("hosts").display(),
            pid = dir.join("pid").display(),
        );
        std::fs::write(dir.join("dnsmasq.conf"), conf).expect("conf");
        // the readiness probe below runs in the pod itself (over lo)
        netns::ip(&["-n", ns, "link", "set", "lo", "up"]).expect("lo up");
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "dnsmasq", "--keep-in-foreground"])
            .arg(format!(
                "--conf-file={}",
                dir.join("dnsmasq.conf").display()
            ))
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("PALISADE_TEST_DNSMASQ_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("dnsmasq runs (Debian package dnsmasq-base)");
        let server = Dnsmasq { child, dir };
        let addr = SocketAddr::from((ip, 53));
        let ready = wait_until(Duration::from_secs(10), || {
            udp_query(
                ns,
                addr,
                &wire::build_query(1, "api.example.com", wire::TYPE_A, None),
            )
            .is_ok()
        });
        assert!(ready, "dnsmasq did not answer in {ns}");
        server
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn udp_query(ns: &str, server: SocketAddr, q: &[u8]) -> std::io::Result<Vec<u8>> {
    let sock =
        netns::in_netns(ns, || UdpSocket::bind("0.0.0.0:0")).map_err(std::io::Error::other)??;
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    sock.send_to(q, server)?;
    let mut buf = vec![0u8; 65_535];
    let (n, from) = sock.recv_from(&mut buf)?;
    assert_eq!(from, server, "the answer comes from the resolver's address");
    buf.truncate(n);
    Ok(buf)
}

fn tcp_query(ns: &str, server: SocketAddr, q: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = netns::in_netns(ns, || {
        TcpStream::connect_timeout(&server, Duration::from_secs(3))
    })
    .map_err(std::io::Error::other)??;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(q);
    s.write_all(&framed)?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf)?;
    Ok(buf)
}

fn a_records(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match r.data {
            Rdata::A(a) => Some(IpAddr::V4(a)),
            _ => None,
        })
        .collect()
}

struct Lab {
    proxy: Option<DnsProxy>,
    records: mpsc::Receiver<DnsRecord>,
    engine: Arc<Mutex<Engine>>,
    /// When the hook made each address known to the engine.
    learned_at: Arc<Mutex<HashMap<IpAddr, Instant>>>,
    dns: Option<Dnsmasq>,
    crawler: Pod,
    other: Pod,
    server: SocketAddr,
    // dropped last
    _env: TestEnv,
}

impl Lab {
    fn new(config: DnsConfig, hosts: &str, ttl: u32) -> Lab {
        let mut env = TestEnv::new().expect("node namespace");
        let crawler = env.add_pod().expect("pod");
        let other = env.add_pod().expect("pod");
        let dns_pod = env.add_pod().expect("pod");
        let manifests = MANIFESTS
            .replace("@DNS@", &dns_pod.ip.to_string())
            .replace("@CRAWLER@", &crawler.ip.to_string())
            .replace("@OTHER@", &other.ip.to_string());
        let snapshot = PolicyFeed {
            manifests: vec![manifests],
            ..Default::default()
        }
        .build(1)
        .expect("valid manifests");
        let engine = Arc::new(Mutex::new(snapshot.engine().clone()));
        let learned_at: Arc<Mutex<HashMap<IpAddr, Instant>>> = Arc::default();
        let hook = TimedHook {
            inner: EngineHook::new(engine.clone()),
            learned_at: learned_at.clone(),
        };
        let dns = Dnsmasq::start(&dns_pod.netns, dns_pod.ip, hosts, ttl);
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let proxy = DnsProxy::spawn(DnsProxyOptions {
            config,
            netns: Some(env.node.clone()),
            workers: Some(1),
            policy: snapshot,
            hook: Arc::new(hook),
            sink: Sink::callback(move |r| {
                if let Ok(tx) = tx.lock() {
                    let _ = tx.send(r);
                }
            }),
        })
        .expect("DNS proxy starts");
        Lab {
            proxy: Some(proxy),
            records: rx,
            engine,
            learned_at,
            dns: Some(dns),
            crawler,
            other,
            server: SocketAddr::from((dns_pod.ip, 53)),
            _env: env,
        }
    }

    fn proxy(&self) -> &DnsProxy {
        self.proxy.as_ref().expect("running")
    }

    fn record(&self) -> DnsRecord {
        self.records
            .recv_timeout(Duration::from_secs(5))
            .expect("a DNS record")
    }

    /// The FQDN names the engine gives `ip` (empty: not an FQDN identity).
    fn fqdn_labels(&self, ip: IpAddr) -> Vec<String> {
        let e = self.engine.lock().expect("engine");
        let id = e.identity_of_ip(ip, Some("node-1"));
        e.identities()
            .get(id)
            .map(|i| {
                i.labels
                    .iter()
                    .map(|l| l.to_string())
                    .filter(|l| l.starts_with("fqdn:"))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether crawler's egress map allows `ip` on `port`/TCP.
    fn crawler_may_connect(&self, ip: IpAddr, port: u16) -> bool {
        let e = self.engine.lock().expect("engine");
        let id = e.identity_of_ip(ip, Some("node-1"));
        e.endpoint_map("default/crawler")
            .map(|m| m.lookup(id, Direction::Egress, 6, port).allowed)
            .unwrap_or(false)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.proxy.take();
        self.dns.take();
    }
}

/// The engine hook, also noting when each address became known.
struct TimedHook {
    inner: EngineHook,
    learned_at: Arc<Mutex<HashMap<IpAddr, Instant>>>,
}

impl palisade_proxy::dns::FqdnHook for TimedHook {
    fn learn(&self, update: palisade_proxy::dns::FqdnUpdate) -> palisade_proxy::dns::HookFuture {
        let f = self.inner.learn(update.clone());
        let now = Instant::now();
        if let Ok(mut m) = self.learned_at.lock() {
            for ip in &update.ips {
                m.entry(*ip).or_insert(now);
            }
        }
        f
    }
    fn forget(&self, ips: Vec<IpAddr>) {
        self.inner.forget(ips)
    }
}

fn config() -> DnsConfig {
    DnsConfig {
        port: 0,
        grace: Duration::from_millis(200),
        expiry_interval: Duration::from_millis(50),
        upstream_timeout: Duration::from_secs(2),
        ..Default::default()
    }
}

#[test]
fn dns_rules_learning_before_release_and_expiry() {
    let lab = Lab::new(config(), HOSTS, 2);
    let api: IpAddr = "192.0.2.10".parse().expect("ip");
    let cr = lab.crawler.netns.clone();
    assert!(
        lab.fqdn_labels(api).is_empty(),
        "not known before the lookup"
    );
    assert!(!lab.crawler_may_connect(api, 443));

    // an allowed name over UDP: resolved, and enforced before the answer
    let q = wire::build_query(0x4242, "api.example.com", wire::TYPE_A, None);
    let answer = udp_query(&cr, lab.server, &q).expect("an answer");
    let received = Instant::now();
    // checked right after the answer arrived: the engine already knows
    assert_eq!(
        lab.fqdn_labels(api),
        vec!["fqdn:api.example.com.".to_string()]
    );
    assert!(
        lab.crawler_may_connect(api, 443),
        "toFQDNs api.example.com on 443 is enforced"
    );
    let learned = lab
        .learned_at
        .lock()
        .expect("map")
        .get(&api)
        .copied()
        .expect("learned");
    assert!(learned < received);
    let m = Message::parse(&answer).expect("valid answer");
    assert_eq!((m.header.id, m.header.rcode), (0x4242, wire::RCODE_NOERROR));
    assert_eq!(a_records(&m), vec![api]);
    let r = lab.record();
    assert_eq!(r.verdict, L7Verdict::Forwarded);
    assert_eq!(
        (r.query.as_str(), r.transport, r.rcode.as_deref()),
        ("api.example.com.", "UDP", Some("NoError"))
    );
    assert_eq!(r.endpoint.as_deref(), Some("default/crawler"));
    assert_eq!(r.ips, vec![api]);
    assert!(
        r.rules.iter().any(|x| x.policy.name == "crawler-egress"),
        "{:?}",
        r.rules
    );
    assert!(r.enforce_ns > 0);

    // a denied name: REFUSED by the proxy (dnsmasq itself would answer it)
    let q = wire::build_query(7, "evil.example.net", wire::TYPE_A, Some(1232));
    let m = Message::parse(&udp_query(&cr, lab.server, &q).expect("answer")).expect("valid");
    assert_eq!(m.header.rcode, wire::RCODE_REFUSED);
    assert_eq!(m.qname(), Some("evil.example.net."));
    assert_eq!(m.edns_udp_size, Some(1232), "EDNS in, EDNS out");
    let r = lab.record();
    assert_eq!(
        (r.verdict, r.rcode.as_deref()),
        (L7Verdict::Dropped, Some("Refused"))
    );
    assert!(
        r.explanation.contains("matches no dns rule"),
        "{}",
        r.explanation
    );
    let evil: IpAddr = "192.0.2.66".parse().expect("ip");
    assert!(
        lab.fqdn_labels(evil).is_empty(),
        "nothing learned from a refused query"
    );
    // the same name from a pod without DNS rules is not redirected at all
    let m = Message::parse(&udp_query(&lab.other.netns, lab.server, &q).expect("answer"))
        .expect("valid");
    assert_eq!(m.header.rcode, wire::RCODE_NOERROR);
    assert_eq!(
        a_records(&m),
        vec!["192.0.2.66".parse::<IpAddr>().expect("ip")]
    );

    // TCP (length-prefixed) with EDNS, and a CNAME chain
    let q = wire::build_query(9, "alias.example.com", wire::TYPE_A, Some(4096));
    let m = Message::parse(&tcp_query(&cr, lab.server, &q).expect("TCP answer")).expect("valid");
    assert_eq!(m.header.rcode, wire::RCODE_NOERROR);
    assert!(
        m.edns_udp_size.is_some(),
        "the resolver's OPT record passed through"
    );
    assert!(
        m.answers
            .iter()
            .any(|r| matches!(&r.data, Rdata::Cname(t) if t == "api.example.com."))
    );
    let r = lab.record();
    assert_eq!(
        (r.transport, r.cnames.clone()),
        ("TCP", vec!["api.example.com.".to_string()])
    );
    let mut names = lab.fqdn_labels(api);
    names.sort();
    assert_eq!(
        names,
        vec![
            "fqdn:alias.example.com.".to_string(),
            "fqdn:api.example.com.".to_string()
        ]
    );

    // the cache, as `palisade fqdn cache list` shows it
    let rows = lab.proxy().cache().list();
    let row = rows
        .iter()
        .find(|r| r.fqdn == "api.example.com." && r.endpoint == "default/crawler")
        .expect("a cache row");
    assert_eq!(
        (row.ips.clone(), row.ttl, row.source.as_str()),
        (vec![api], 2, "lookup")
    );

    // TTL (2 s) plus grace (200 ms): the address is forgotten
    assert!(
        wait_until(Duration::from_secs(8), || lab.fqdn_labels(api).is_empty()),
        "the FQDN identity expires"
    );
    assert!(!lab.crawler_may_connect(api, 443));
    assert!(lab.proxy().cache().list().is_empty());
    let s = lab.proxy().stats();
    assert!(
        s.expired_ips >= 1 && s.denied == 1 && s.forwarded >= 2,
        "{s:?}"
    );
}

#[test]
fn truncated_answers_are_retried_over_tcp_and_nxdomain_is_configurable() {
    let mut hosts = String::from(HOSTS);
    let big: Vec<IpAddr> = (1..=60u8)
        .map(|i| IpAddr::V4(Ipv4Addr::new(198, 51, 100, i)))
        .collect();
    for ip in &big {
        hosts.push_str(&format!("{ip} big.example.com\n"));
    }
    let lab = Lab::new(
        DnsConfig {
            reject: RejectCode::NameError,
            ..config()
        },
        &hosts,
        300,
    );
    let cr = lab.crawler.netns.clone();

    // 60 A records do not fit 512 bytes: dnsmasq truncates over UDP
    let q = wire::build_query(0x1111, "big.example.com", wire::TYPE_A, None);
    let direct = Message::parse(&udp_query(&lab.other.netns, lab.server, &q).expect("direct"))
        .expect("valid");
    assert!(direct.header.truncated, "dnsmasq truncates the UDP answer");

    // through the proxy: it asked again over TCP and learned all 60
    // addresses before releasing the (still truncated) UDP answer
    let m = Message::parse(&udp_query(&cr, lab.server, &q).expect("answer")).expect("valid");
    assert!(
        m.header.truncated,
        "a non-EDNS client still gets TC and retries itself"
    );
    for ip in &big {
        assert_eq!(
            lab.fqdn_labels(*ip),
            vec!["fqdn:big.example.com.".to_string()],
            "{ip}"
        );
    }
    let r = lab.record();
    assert!(r.tcp_fallback);
    assert_eq!(r.ips.len(), 60);
    assert_eq!(lab.proxy().stats().tcp_fallbacks, 1);

    // with a large EDNS buffer the complete TCP answer is relayed over UDP
    let q = wire::build_query(0x2222, "big.example.com", wire::TYPE_A, Some(4096));
    let m = Message::parse(&udp_query(&cr, lab.server, &q).expect("answer")).expect("valid");
    assert!(!m.header.truncated);
    assert_eq!(a_records(&m).len(), 60);

    // the client's own TCP retry
    let q = wire::build_query(0x3333, "big.example.com", wire::TYPE_A, None);
    let m = Message::parse(&tcp_query(&cr, lab.server, &q).expect("answer")).expect("valid");
    assert_eq!(a_records(&m).len(), 60);

    // denied names get NXDOMAIN when configured so
    let q = wire::build_query(5, "evil.example.net", wire::TYPE_AAAA, None);
    let m = Message::parse(&udp_query(&cr, lab.server, &q).expect("answer")).expect("valid");
    assert_eq!(m.header.rcode, wire::RCODE_NXDOMAIN);
}
