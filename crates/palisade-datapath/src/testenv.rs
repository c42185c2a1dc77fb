//! The shared test environment: uniquely named namespaces, veth pods and a
//! private pin root, all removed on drop (also when a test panics).
//!
//! Each [`TestEnv`] has its own "node" namespace standing in for the host
//! (so tests never change the real root namespace's forwarding, routes or
//! TCX attachments and can run in parallel), pods attached to it, and a pin
//! root `/sys/fs/bpf/palisade-test-<pid>-<n>` that never touches a real
//! agent's pins.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::loader::DatapathConfig;
use crate::netns::{self, NetnsError, Pod, PodSpec};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A self-cleaning test environment.
#[derive(Debug)]
pub struct TestEnv {
    /// Unique tag `<pid>-<n>`.
    pub tag: String,
    /// The node namespace (hosts the pods' host-side veths).
    pub node: String,
    /// This environment's pin root.
    pub pin_root: PathBuf,
    pods: Vec<Pod>,
    short: String,
}

impl TestEnv {
    /// Creates the node namespace (forwarding on) and reserves a pin root.
    pub fn new() -> Result<Self, NetnsError> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{pid}-{n}");
        // interface names (<= 15 bytes): "p" + base36(pid) (4) + "x" + base36(n) (3)
        // + "h" + pod index. They live in this env's own node namespace, so
        // the truncation cannot collide with another environment.
        let short = format!(
            "p{}x{}",
            base36(pid % 36u32.pow(4)),
            base36(n % 36u32.pow(3))
        );
        let env = TestEnv {
            node: format!("pal-{tag}-node"),
            pin_root: PathBuf::from(format!("/sys/fs/bpf/palisade-test-{tag}")),
            pods: Vec::new(),
            tag,
            short,
        };
        netns::create_netns(&env.node)?;
        netns::enable_ip_forward(Some(&env.node))?;
        Ok(env)
    }

    /// A datapath configuration using this environment's pin root.
    pub fn config(&self) -> DatapathConfig {
        DatapathConfig {
            pin_root: self.pin_root.clone(),
            ..DatapathConfig::default()
        }
    }

    /// Adds a pod with address 100.64.0.(pods+2) attached to the node.
    pub fn add_pod(&mut self) -> Result<Pod, NetnsError> {
        let i = self.pods.len() as u8;
        let spec = PodSpec {
            netns: format!("pal-{}-{}", self.tag, i),
            host_ifname: format!("{}h{}", self.short, i),
            ip: Ipv4Addr::new(100, 64, 0, 2 + i),
            host_mac: [0x02, 0xaa, 0, 0, 0, i],
            pod_mac: [0x02, 0xbb, 0, 0, 0, i],
        };
        let pod = netns::create_pod(Some(&self.node), &spec)?;
        self.pods.push(pod.clone());
        Ok(pod)
    }

    /// Runs `f` in the node namespace (e.g. `Datapath::attach`).
    pub fn in_node<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> Result<T, NetnsError> {
        netns::in_netns(&self.node, f)
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        for pod in &self.pods {
            let _ = netns::delete_pod(pod);
        }
        let _ = netns::delete_netns(&self.node);
        // unlinking the pins releases maps and links
        let _ = std::fs::remove_dir_all(&self.pin_root);
    }
}

fn base36(mut v: u32) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(v % 36) as usize]);
        v /= 36;
        if v == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

/// Polls `cond` until it returns true or `timeout` passes; returns whether it
/// became true. The way tests wait (never a bare sleep).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_ifnamsiz() {
        let short = format!("p{}x{}", base36(36u32.pow(4) - 1), base36(36u32.pow(3) - 1));
        assert!(format!("{short}h99").len() <= 15, "{short}");
    }
}

/// Echoes what a TCP connection sends until it closes or `stop` is set
/// (the test servers' echo).
pub fn echo_connection(mut s: std::net::TcpStream, stop: &std::sync::atomic::AtomicBool) {
    use std::io::{Read, Write};
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
}

/// A TCP echo server running on a thread inside a pod's namespace; stops on drop.
#[derive(Debug)]
pub struct EchoServer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<Result<(), NetnsError>>>,
}

impl EchoServer {
    /// Listens on `0.0.0.0:port` in namespace `ns`; returns once bound.
    pub fn start(ns: &str, port: u16) -> Result<Self, NetnsError> {
        use std::sync::atomic::AtomicBool;
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
        let handle = netns::spawn_in_netns(ns, move || {
            let listener = match std::net::TcpListener::bind(("0.0.0.0", port)) {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let _ = listener.set_nonblocking(true);
            let _ = tx.send(Ok(()));
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let stop3 = stop2.clone();
                        std::thread::spawn(move || echo_connection(s, &stop3));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => Ok(EchoServer {
                stop,
                handle: Some(handle),
            }),
            Ok(Err(source)) => Err(NetnsError::Io {
                context: format!("binding port {port}"),
                source,
            }),
            Err(_) => {
                stop.store(true, Ordering::Relaxed);
                Err(NetnsError::ThreadPanicked(ns.to_string()))
            }
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Connects from namespace `ns` to `addr:port` within `timeout`.
pub fn tcp_connect(
    ns: &str,
    addr: Ipv4Addr,
    port: u16,
    timeout: Duration,
) -> Result<std::io::Result<std::net::TcpStream>, NetnsError> {
    netns::in_netns(ns, || {
        std::net::TcpStream::connect_timeout(&std::net::SocketAddr::from((addr, port)), timeout)
    })
}

/// Writes `msg` and reads the echo back within `timeout`; true if it came back.
pub fn echo_roundtrip(stream: &mut std::net::TcpStream, msg: &[u8], timeout: Duration) -> bool {
    use std::io::{Read, Write};
    if stream.write_all(msg).is_err() {
        return false;
    }
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < msg.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return false;
        }
        match stream.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => return false,
        }
    }
    got == msg
}
