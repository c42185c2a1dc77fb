//! Real traffic inside network namespaces: TCP, UDP and ICMP echo probes
//! and echo servers. Used by `palisade lab` and the integration tests. Each
//! probe runs on a thread entered into the client's namespace, so its
//! sockets belong there.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use palisade_datapath::netns::{self, NetnsError};

/// What happened on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The request got its echo back.
    Allowed,
    /// Nothing came back before the timeout (dropped).
    Dropped,
    /// The peer answered with a reset / port unreachable (reached, no server).
    Refused,
    /// Something else failed.
    Error(String),
}

impl Outcome {
    /// Whether the connection got through to the peer.
    pub fn delivered(&self) -> bool {
        matches!(self, Outcome::Allowed | Outcome::Refused)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Allowed => f.write_str("allowed"),
            Outcome::Dropped => f.write_str("dropped"),
            Outcome::Refused => f.write_str("refused (reached, no server)"),
            Outcome::Error(e) => write!(f, "error: {e}"),
        }
    }
}

fn io_outcome(e: &std::io::Error) -> Outcome {
    match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => Outcome::Dropped,
        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset => {
            Outcome::Refused
        }
        _ => Outcome::Error(e.to_string()),
    }
}

fn flatten(r: Result<Outcome, NetnsError>) -> Outcome {
    r.unwrap_or_else(|e| Outcome::Error(e.to_string()))
}

const PROBE: &[u8] = b"palisade-probe\n";

/// Sends `msg` on `stream` and waits for the same bytes back.
pub fn echo(stream: &mut TcpStream, msg: &[u8], timeout: Duration) -> Outcome {
    if let Err(e) = stream.set_read_timeout(Some(timeout)) {
        return Outcome::Error(e.to_string());
    }
    if let Err(e) = stream.write_all(msg) {
        return io_outcome(&e);
    }
    let mut got = vec![0u8; msg.len()];
    match stream.read_exact(&mut got) {
        Ok(()) if got == msg => Outcome::Allowed,
        Ok(()) => Outcome::Error("echo mismatch".into()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Outcome::Refused,
        Err(e) => io_outcome(&e),
    }
}

/// Opens a TCP connection from namespace `ns` (the socket stays usable
/// from any thread afterwards).
pub fn tcp_connect(
    ns: &str,
    dst: Ipv4Addr,
    port: u16,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    netns::in_netns(ns, || {
        TcpStream::connect_timeout(&SocketAddr::from((dst, port)), timeout)
    })
    .map_err(|e| std::io::Error::other(e.to_string()))?
}

/// Opens a TCP connection from namespace `ns` with source address `src`.
pub fn tcp_connect_from(
    ns: &str,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    port: u16,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    netns::in_netns(ns, || -> std::io::Result<TcpStream> {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        s.bind(&SocketAddr::from((src, 0)).into())?;
        s.connect_timeout(&SocketAddr::from((dst, port)).into(), timeout)?;
        Ok(s.into())
    })
    .map_err(|e| std::io::Error::other(e.to_string()))?
}

/// TCP connect + echo from namespace `ns`.
pub fn tcp_probe(ns: &str, dst: Ipv4Addr, port: u16, timeout: Duration) -> Outcome {
    match tcp_connect(ns, dst, port, timeout) {
        Ok(mut s) => echo(&mut s, PROBE, timeout),
        Err(e) => io_outcome(&e),
    }
}

/// [`tcp_probe`] with an explicit source address (a namespace with several).
pub fn tcp_probe_from(
    ns: &str,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    port: u16,
    timeout: Duration,
) -> Outcome {
    match tcp_connect_from(ns, src, dst, port, timeout) {
        Ok(mut s) => echo(&mut s, PROBE, timeout),
        Err(e) => io_outcome(&e),
    }
}

/// UDP request/response from namespace `ns`.
pub fn udp_probe(ns: &str, dst: Ipv4Addr, port: u16, timeout: Duration) -> Outcome {
    udp_probe_from(ns, Ipv4Addr::UNSPECIFIED, dst, port, timeout)
}

/// [`udp_probe`] with an explicit source address.
pub fn udp_probe_from(
    ns: &str,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    port: u16,
    timeout: Duration,
) -> Outcome {
    flatten(netns::in_netns(ns, || {
        let sock = match UdpSocket::bind((src, 0)) {
            Ok(s) => s,
            Err(e) => return Outcome::Error(e.to_string()),
        };
        if let Err(e) = sock.connect((dst, port)) {
            return io_outcome(&e);
        }
        if let Err(e) = sock.set_read_timeout(Some(timeout)) {
            return Outcome::Error(e.to_string());
        }
        if let Err(e) = sock.send(PROBE) {
            return io_outcome(&e);
        }
        let mut buf = [0u8; 64];
        match sock.recv(&mut buf) {
            Ok(n) if &buf[..n] == PROBE => Outcome::Allowed,
            Ok(_) => Outcome::Error("echo mismatch".into()),
            Err(e) => io_outcome(&e),
        }
    }))
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

static ICMP_ID: AtomicU16 = AtomicU16::new(0x5000);

/// ICMP echo (ping) from namespace `ns`, with a raw socket.
pub fn icmp_probe(ns: &str, dst: Ipv4Addr, timeout: Duration) -> Outcome {
    icmp_probe_from(ns, Ipv4Addr::UNSPECIFIED, dst, timeout)
}

/// [`icmp_probe`] with an explicit source address.
pub fn icmp_probe_from(ns: &str, src: Ipv4Addr, dst: Ipv4Addr, timeout: Duration) -> Outcome {
    let id = ICMP_ID.fetch_add(1, Ordering::Relaxed) ^ (std::process::id() as u16);
    flatten(netns::in_netns(ns, move || {
        icmp_echo(src, dst, id, timeout)
    }))
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr, id: u16, timeout: Duration) -> Outcome {
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
    if fd < 0 {
        return Outcome::Error(std::io::Error::last_os_error().to_string());
    }
    // SAFETY: fd is a fresh socket we own.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut pkt = vec![8u8, 0, 0, 0];
    pkt.extend_from_slice(&id.to_be_bytes());
    pkt.extend_from_slice(&1u16.to_be_bytes());
    pkt.extend_from_slice(b"palisade");
    let c = checksum(&pkt);
    pkt[2..4].copy_from_slice(&c.to_be_bytes());
    if !src.is_unspecified() {
        let a = sockaddr(src);
        // SAFETY: valid sockaddr_in of the given size.
        let rc = unsafe {
            libc::bind(
                sock.as_raw_fd(),
                (&a as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Outcome::Error(std::io::Error::last_os_error().to_string());
        }
    }
    let addr = sockaddr(dst);
    // SAFETY: valid buffer and sockaddr_in of the given size.
    let rc = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return io_outcome(&std::io::Error::last_os_error());
    }
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Outcome::Dropped;
        }
        let mut pfd = libc::pollfd {
            fd: sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, left.as_millis().clamp(1, 60_000) as i32) };
        if rc <= 0 {
            continue;
        }
        // SAFETY: valid buffer.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            continue;
        }
        let n = n as usize;
        let ihl = usize::from(buf[0] & 0x0f) * 4;
        if n < ihl + 8 {
            continue;
        }
        let src = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
        let icmp = &buf[ihl..n];
        let rid = u16::from_be_bytes([icmp[4], icmp[5]]);
        if icmp[0] == 0 && rid == id && src == dst {
            return Outcome::Allowed;
        }
        if icmp[0] == 3 && n >= ihl + 8 + 20 + 8 {
            // destination unreachable about our echo
            let inner = &icmp[8..];
            let inner_ihl = usize::from(inner[0] & 0x0f) * 4;
            if inner.len() >= inner_ihl + 8
                && u16::from_be_bytes([inner[inner_ihl + 4], inner[inner_ihl + 5]]) == id
            {
                return Outcome::Refused;
            }
        }
    }
}

/// TCP and UDP echo servers on threads inside a namespace; stop on drop.
#[derive(Debug)]
pub struct Servers {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<Result<(), NetnsError>>>,
}

fn wait_readable(fd: i32, ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, ms) > 0 }
}

impl Servers {
    /// Starts echo servers on `0.0.0.0` in namespace `ns`; returns once all are bound.
    pub fn start(ns: &str, tcp_ports: &[u16], udp_ports: &[u16]) -> std::io::Result<Servers> {
        Self::start_on(ns, &[Ipv4Addr::UNSPECIFIED], tcp_ports, udp_ports)
    }

    /// Like [`Servers::start`], bound to each of `addrs` (a UDP reply then
    /// leaves from the address the request went to, also when the
    /// namespace has several).
    pub fn start_on(
        ns: &str,
        addrs: &[Ipv4Addr],
        tcp_ports: &[u16],
        udp_ports: &[u16],
    ) -> std::io::Result<Servers> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        let (tx, rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
        let tcp: Vec<(Ipv4Addr, u16)> = addrs
            .iter()
            .flat_map(|a| tcp_ports.iter().map(move |p| (*a, *p)))
            .collect();
        let udp: Vec<(Ipv4Addr, u16)> = addrs
            .iter()
            .flat_map(|a| udp_ports.iter().map(move |p| (*a, *p)))
            .collect();
        for &(addr, port) in &tcp {
            let echo_stop = stop.clone();
            handles.push(accept_loop(ns, addr, port, &stop, &tx, move |s| {
                palisade_datapath::testenv::echo_connection(s, &echo_stop)
            }));
        }
        for &(addr, port) in &udp {
            let (stop, tx) = (stop.clone(), tx.clone());
            handles.push(netns::spawn_in_netns(ns, move || {
                let sock = match UdpSocket::bind((addr, port)) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let _ = sock.set_read_timeout(Some(Duration::from_millis(100)));
                let _ = tx.send(Ok(()));
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::SeqCst) {
                    if let Ok((n, from)) = sock.recv_from(&mut buf) {
                        let _ = sock.send_to(&buf[..n], from);
                    }
                }
            }));
        }
        drop(tx);
        let servers = Servers { stop, handles };
        for _ in 0..(tcp.len() + udp.len()) {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(std::io::Error::other(format!(
                        "servers in {ns} did not start (does the namespace exist?)"
                    )));
                }
            }
        }
        Ok(servers)
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// Polls `cond` until true or `timeout` passes (the way tests wait).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icmp_checksum() {
        // echo request id 1 seq 1, no payload: checksum 0xf7fd
        let pkt = [8u8, 0, 0, 0, 0, 1, 0, 1];
        assert_eq!(checksum(&pkt), 0xf7fd);
    }
}

/// A tiny HTTP/1.1 server in a namespace: answers every request with
/// `200 OK` and the body `METHOD PATH\n` (one request per connection).
pub struct HttpServer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<std::result::Result<(), NetnsError>>>,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer").finish_non_exhaustive()
    }
}

/// Listens on `(addr, port)` in namespace `ns` and hands every accepted
/// connection (blocking) to `conn` on a thread of its own, until `stop`;
/// `ready` hears whether it listens. The test servers' one accept loop.
fn accept_loop(
    ns: &str,
    addr: Ipv4Addr,
    port: u16,
    stop: &Arc<AtomicBool>,
    ready: &std::sync::mpsc::Sender<std::io::Result<()>>,
    conn: impl Fn(TcpStream) + Clone + Send + 'static,
) -> JoinHandle<Result<(), NetnsError>> {
    let (stop, ready) = (stop.clone(), ready.clone());
    netns::spawn_in_netns(ns, move || {
        let listener = match TcpListener::bind((addr, port)) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = listener.set_nonblocking(true);
        let _ = ready.send(Ok(()));
        while !stop.load(Ordering::SeqCst) {
            if !wait_readable(listener.as_raw_fd(), 100) {
                continue;
            }
            if let Ok((s, _)) = listener.accept() {
                let _ = s.set_nonblocking(false);
                let conn = conn.clone();
                std::thread::spawn(move || conn(s));
            }
        }
    })
}

fn read_http_head(s: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).into_owned();
            return Ok((head, buf[i + 4..].to_vec()));
        }
        let n = s.read(&mut chunk)?;
        if n == 0 || buf.len() > 64 * 1024 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads the rest of a message's body (`Content-Length` of `head`) after
/// what came with the head; stops early at EOF or an error.
fn read_body(s: &mut TcpStream, head: &str, body: &mut Vec<u8>) {
    let want = content_length(head);
    let mut chunk = [0u8; 4096];
    while body.len() < want {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
}

fn content_length(head: &str) -> usize {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

impl HttpServer {
    /// Listens on `port` in namespace `ns`.
    pub fn start(ns: &str, port: u16) -> std::io::Result<HttpServer> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
        let handle = accept_loop(ns, Ipv4Addr::UNSPECIFIED, port, &stop, &tx, |mut s| {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let Ok((head, mut body)) = read_http_head(&mut s) else {
                return;
            };
            read_body(&mut s, &head, &mut body);
            let line = head.lines().next().unwrap_or_default();
            let mut parts = line.split_whitespace();
            let reply = format!(
                "{} {}\n",
                parts.next().unwrap_or("?"),
                parts.next().unwrap_or("?")
            );
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                reply.len()
            );
        });
        drop(tx);
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => Ok(HttpServer {
                stop,
                handle: Some(handle),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(std::io::Error::other("HTTP server did not start")),
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// An HTTP/1.1 answer: status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAnswer {
    pub status: u16,
    pub body: String,
}

/// Sends one HTTP/1.1 request from namespace `ns` (`headers` as
/// `Name: value`); `Err` when no HTTP answer came (dropped, reset).
pub fn http_request(
    ns: &str,
    dst: Ipv4Addr,
    port: u16,
    method: &str,
    path: &str,
    headers: &[&str],
    timeout: Duration,
) -> std::io::Result<HttpAnswer> {
    let mut s = tcp_connect(ns, dst, port, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {dst}:{port}\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("Content-Length: 0\r\n\r\n");
    s.write_all(req.as_bytes())?;
    let (head, mut body) = read_http_head(&mut s)?;
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    read_body(&mut s, &head, &mut body);
    Ok(HttpAnswer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// One DNS query for `name`'s A records over UDP from namespace `ns` to
/// `server`:53 (2 s timeout); `Err` when no parsable answer came.
pub fn dns_query(
    ns: &str,
    server: Ipv4Addr,
    name: &str,
    id: u16,
) -> std::io::Result<palisade_proxy::dns::wire::Message> {
    use palisade_proxy::dns::wire;
    let sock =
        netns::in_netns(ns, || UdpSocket::bind("0.0.0.0:0")).map_err(std::io::Error::other)??;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    sock.send_to(
        &wire::build_query(id, name, wire::TYPE_A, None),
        (server, 53),
    )?;
    let mut buf = vec![0u8; 65_535];
    let (n, _) = sock.recv_from(&mut buf)?;
    wire::Message::parse(&buf[..n])
        .map_err(|e| std::io::Error::other(format!("a malformed DNS answer: {e:?}")))
}

/// dnsmasq (Debian `dnsmasq-base`) answering from a hosts file on
/// `ip`:53 in a namespace, as the cluster's DNS server in the lab and
/// tests; killed, and its directory removed, on drop.
pub struct Dnsmasq {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Dnsmasq {
    /// Starts it with `hosts` (hosts-file lines) and returns once it
    /// answers a query for `probe` (one of the hosts' names).
    pub fn start(ns: &str, ip: Ipv4Addr, hosts: &str, probe: &str) -> std::io::Result<Dnsmasq> {
        static COUNTER: AtomicU16 = AtomicU16::new(0);
        let dir = std::env::temp_dir().join(format!(
            "palisade-dnsmasq-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("hosts"), hosts)?;
        let conf = format!(
            "no-resolv\nno-hosts\nno-poll\nbind-interfaces\nlisten-address={ip}\nport=53\n\
addn-hosts={hosts}\nlocal-ttl=300\nuser=root\npid-file={pid}\nlog-facility=-\n",
            hosts = dir.join("hosts").display(),
            pid = dir.join("pid").display(),
        );
        std::fs::write(dir.join("dnsmasq.conf"), conf)?;
        let child = netns::ip(&["-n", ns, "link", "set", "lo", "up"])
            .map_err(std::io::Error::other)
            .and_then(|_| {
                std::process::Command::new("ip")
                    .args(["netns", "exec", ns, "dnsmasq", "--keep-in-foreground"])
                    .arg(format!(
                        "--conf-file={}",
                        dir.join("dnsmasq.conf").display()
                    ))
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
            });
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let server = Dnsmasq { child, dir };
        if !wait_until(Duration::from_secs(10), || {
            dns_query(ns, ip, probe, 1).is_ok()
        }) {
            return Err(std::io::Error::other(format!(
                "dnsmasq did not answer in {ns}"
            )));
        }
        Ok(server)
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
