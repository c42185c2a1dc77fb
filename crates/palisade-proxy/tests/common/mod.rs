//! Shared test fixtures: a lab of pods in unique namespaces (from
//! `palisade_datapath::testenv`), the proxy in the lab's node namespace,
//! real HTTP servers in pods, curl and a raw HTTP/1 client.
#![allow(dead_code)]

pub mod grpc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use palisade_datapath::netns::{self, Pod};
use palisade_datapath::testenv::TestEnv;
use palisade_proxy::{
    L7Record, PolicyFeed, PolicySnapshot, ProxyConfig, ProxyHandle, ProxyOptions, RecordSink,
};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const L7_MANIFESTS: &str = "/work/shared/acceptance/semantics/l7-http/manifests.yaml";

/// The acceptance manifests' pod addresses, in the order pods are created.
pub const MANIFEST_PODS: &[(&str, &str)] = &[
    ("frontend", "10.0.1.10"),
    ("other", "10.0.1.20"),
    ("myapp", "10.0.2.30"),
    ("database", "10.0.2.40"),
    ("myservice", "10.0.2.50"),
    ("catalog", "10.0.2.60"),
];

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Pods named after the manifests' pods, a proxy in the node namespace,
/// and the records it emitted. Everything is removed on drop.
pub struct Lab {
    pub proxy: Option<ProxyHandle>,
    pub records: mpsc::Receiver<L7Record>,
    pub pods: BTreeMap<String, Pod>,
    /// The manifests with pod addresses replaced by the lab's.
    pub manifests: String,
    servers: Vec<HttpServer>,
    // dropped last: namespaces go after the proxy and servers stopped
    pub env: TestEnv,
}

impl Lab {
    /// Creates the named pods (from `MANIFEST_PODS`) and a proxy enforcing
    /// `manifests` (whose `10.0.x.y` addresses are rewritten).
    pub fn new(pods: &[&str], manifests: &str, config: ProxyConfig) -> Lab {
        Lab::build(pods, manifests, config, None)
    }

    /// Like `new`, but the proxy reads its policy from a feed file (written
    /// by the caller, polled every 20 ms) instead of an initial snapshot.
    pub fn with_feed(pods: &[&str], config: ProxyConfig, feed: std::path::PathBuf) -> Lab {
        Lab::build(pods, &manifests(), config, Some(feed))
    }

    fn build(
        pods: &[&str],
        manifests: &str,
        config: ProxyConfig,
        feed_file: Option<std::path::PathBuf>,
    ) -> Lab {
        init_tracing();
        let mut env = TestEnv::new().expect("node namespace");
        let mut created = BTreeMap::new();
        let mut text = manifests.to_string();
        for (name, addr) in MANIFEST_PODS {
            // every pod gets a slot so that addresses stay stable
            let pod = env.add_pod().expect("pod");
            text = text.replace(&format!("podIP: {addr}\n"), &format!("podIP: {}\n", pod.ip));
            if pods.contains(name) {
                created.insert(name.to_string(), pod);
            }
        }
        let feed = PolicyFeed {
            manifests: vec![text.clone()],
            ..Default::default()
        };
        let snapshot = feed.build(1).expect("manifests are valid");
        let (initial, feed_source) = match feed_file {
            Some(path) => (None, Some(palisade_proxy::FeedSource::File(path))),
            None => (Some(snapshot), None),
        };
        let (tx, rx) = mpsc::channel();
        let tx = std::sync::Mutex::new(tx);
        let sink = RecordSink::callback(move |r| {
            if let Ok(tx) = tx.lock() {
                let _ = tx.send(r);
            }
        });
        let proxy = ProxyHandle::spawn(ProxyOptions {
            config,
            netns: Some(env.node.clone()),
            workers: Some(2),
            sink,
            initial,
            feed: feed_source,
            feed_poll: Some(Duration::from_millis(20)),
            ..Default::default()
        })
        .expect("proxy starts");
        Lab {
            proxy: Some(proxy),
            records: rx,
            pods: created,
            manifests: text,
            servers: Vec::new(),
            env,
        }
    }

    pub fn proxy(&self) -> &ProxyHandle {
        self.proxy.as_ref().expect("proxy running")
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .get(name)
            .unwrap_or_else(|| panic!("pod {name} not created"))
    }

    pub fn ip(&self, name: &str) -> Ipv4Addr {
        self.pod(name).ip
    }

    /// Starts an HTTP/1.1 + h2c server on `port` in pod `name`.
    pub fn serve(&mut self, name: &str, port: u16) {
        let ns = self.pod(name).netns.clone();
        self.servers.push(HttpServer::start(&ns, port));
    }

    /// Replaces the proxy's policy with `manifests` (addresses as in the
    /// lab's manifests); returns the new revision.
    pub fn update_policy(&self, manifests: &str) -> u64 {
        let feed = PolicyFeed {
            manifests: vec![manifests.to_string()],
            ..Default::default()
        };
        self.proxy().update_feed(&feed).expect("valid update")
    }

    /// The next record, within 5 s.
    pub fn next_record(&self) -> L7Record {
        self.records
            .recv_timeout(Duration::from_secs(5))
            .expect("an L7 record")
    }

    pub fn drain_records(&self) -> Vec<L7Record> {
        self.records.try_iter().collect()
    }

    /// A policy snapshot of `manifests` (for trace comparisons).
    pub fn snapshot(manifests: &str) -> PolicySnapshot {
        PolicyFeed {
            manifests: vec![manifests.to_string()],
            ..Default::default()
        }
        .build(1)
        .expect("valid")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.proxy.take();
        self.servers.clear();
    }
}

pub fn manifests() -> String {
    std::fs::read_to_string(L7_MANIFESTS).expect("acceptance manifests")
}

/// An HTTP server (HTTP/1.1 and h2c) in a pod. It answers 200 with a body
/// listing what it received: `METHOD PATH`, `peer: IP:PORT`, the headers
/// and the request body's length.
pub struct HttpServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), netns::NetnsError>>>,
}

impl HttpServer {
    pub fn start(ns: &str, port: u16) -> HttpServer {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let thread = netns::spawn_in_netns(ns, move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
                    .await
                    .expect("bind");
                let _ = ready_tx.send(());
                let mut stop_rx = stop_rx;
                loop {
                    let (stream, peer) = tokio::select! {
                        r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                        _ = &mut stop_rx => break,
                    };
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| echo(req, peer));
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server ready");
        HttpServer {
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn echo(
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    use http_body_util::BodyExt;
    let mut text = format!(
        "{} {}\npeer: {peer}\n",
        req.method(),
        req.uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    for (n, v) in req.headers() {
        text.push_str(&format!(
            "{}: {}\n",
            n,
            String::from_utf8_lossy(v.as_bytes())
        ));
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    text.push_str(&format!("body-length: {}\n", body.len()));
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut().insert(
        "x-peer",
        hyper::header::HeaderValue::from_str(&peer.to_string()).expect("header"),
    );
    Ok(r)
}

/// curl's result: exit code, HTTP status (0 when none), body.
#[derive(Debug)]
pub struct CurlResult {
    pub exit: i32,
    pub status: u16,
    pub body: String,
}

/// Runs curl in pod namespace `ns` (the pod connects to the real
/// destination; the node redirects it).
pub fn curl(ns: &str, args: &[&str]) -> CurlResult {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "curl",
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
        ])
        .args(args)
        .output()
        .expect("curl runs (Debian package curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    CurlResult {
        exit: out.status.code().unwrap_or(-1),
        status: code.trim().parse().unwrap_or(0),
        body: body.to_string(),
    }
}

/// A parsed HTTP/1 response.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A plain TCP HTTP/1.1 client opened inside a pod (one connection).
pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    pub fn connect(ns: &str, ip: Ipv4Addr, port: u16) -> std::io::Result<RawClient> {
        let stream = netns::in_netns(ns, || {
            TcpStream::connect_timeout(&SocketAddr::from((ip, port)), Duration::from_secs(5))
        })
        .map_err(std::io::Error::other)??;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(RawClient {
            stream,
            buf: Vec::new(),
        })
    }

    pub fn send(&mut self, raw: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(raw)
    }

    /// Sends one request and reads its response.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> std::io::Result<RawResponse> {
        self.send(&request_bytes(method, path, headers))?;
        self.read_response()
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// Reads one response (Content-Length or chunked bodies).
    pub fn read_response(&mut self) -> std::io::Result<RawResponse> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            self.fill()?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(a, b)| (a.trim().to_string(), b.trim().to_string()))
            .collect();
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let body = if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            while self.buf.len() < len {
                self.fill()?;
            }
            self.buf.drain(..len).collect::<Vec<u8>>()
        } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            let mut body = Vec::new();
            loop {
                let line_end = loop {
                    if let Some(i) = find(&self.buf, b"\r\n") {
                        break i;
                    }
                    self.fill()?;
                };
                let size = usize::from_str_radix(
                    String::from_utf8_lossy(&self.buf[..line_end]).trim(),
                    16,
                )
                .unwrap_or(0);
                self.buf.drain(..line_end + 2);
                while self.buf.len() < size + 2 {
                    self.fill()?;
                }
                body.extend(self.buf.drain(..size));
                self.buf.drain(..2);
                if size == 0 {
                    break;
                }
            }
            body
        } else {
            Vec::new()
        };
        Ok(RawResponse {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

pub fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut s = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
    for (n, v) in headers {
        s.push_str(&format!("{n}: {v}\r\n"));
    }
    if !headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        && !headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"))
    {
        s.push_str("Content-Length: 0\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Polls `cond` until true or `timeout`; never a bare sleep.
pub fn wait_until(timeout: Duration, cond: impl FnMut() -> bool) -> bool {
    palisade_datapath::testenv::wait_until(timeout, cond)
}

/// A deadline helper for loops.
pub fn deadline(secs: u64) -> Instant {
    Instant::now() + Duration::from_secs(secs)
}
