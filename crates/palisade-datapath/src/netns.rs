//! Network namespaces and veth "pods".
//!
//! Plumbing uses iproute2 (`ip`); code that must run inside a namespace
//! (sockets, TCX attachment by ifindex) runs on a dedicated thread entered
//! with `setns(CLONE_NEWNET)` ([`in_netns`]): `setns` switches only the calling
//! thread, and `ip netns exec` would hide bpffs.
//!
//! A pod is a namespace with `eth0` holding `<ip>/32`, a link-local gateway
//! [`GATEWAY`] reached through a permanent neighbour entry pointing at the
//! host-side veth, and a default route via it. The host side (in the root
//! namespace or in a "node" namespace standing in for it) gets a /32 route to
//! the pod and a permanent neighbour entry for the pod's MAC; IPv4
//! forwarding is enabled there.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;

/// The pods' default gateway (never assigned to an interface).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// Errors of namespace and interface plumbing.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// `ip` could not be run (iproute2 missing?).
    #[error("running `ip {args}`: {source} (is the Debian package iproute2 installed?)")]
    Spawn {
        /// Arguments.
        args: String,
        /// Error.
        #[source]
        source: std::io::Error,
    },
    /// `ip` failed.
    #[error("`ip {args}` failed: {stderr}")]
    Command {
        /// Arguments.
        args: String,
        /// Its stderr.
        stderr: String,
    },
    /// Opening or entering a namespace failed.
    #[error("entering network namespace `{name}`: {source}")]
    Enter {
        /// Namespace name.
        name: String,
        /// Error.
        #[source]
        source: std::io::Error,
    },
    /// The namespace thread panicked.
    #[error("the thread running in network namespace `{0}` panicked")]
    ThreadPanicked(String),
    /// Any other I/O error with context.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Error.
        #[source]
        source: std::io::Error,
    },
    /// A name is too long or invalid.
    #[error("invalid name: {0}")]
    InvalidName(String),
}

type Result<T, E = NetnsError> = std::result::Result<T, E>;

/// Runs `ip <args>`, returning its stdout.
pub fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| NetnsError::Spawn {
            args: args.join(" "),
            source,
        })?;
    if !out.status.success() {
        return Err(NetnsError::Command {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip` in namespace `ns` (`None` = the caller's namespace).
fn ip_in(ns: Option<&str>, args: &[&str]) -> Result<String> {
    match ns {
        Some(ns) => {
            let mut full = vec!["-n", ns];
            full.extend_from_slice(args);
            ip(&full)
        }
        None => ip(args),
    }
}

/// Creates network namespace `name` (with `lo` up).
pub fn create_netns(name: &str) -> Result<()> {
    ip(&["netns", "add", name])?;
    ip(&["-n", name, "link", "set", "lo", "up"])?;
    Ok(())
}

/// Deletes network namespace `name` (its interfaces go with it).
pub fn delete_netns(name: &str) -> Result<()> {
    ip(&["netns", "delete", name]).map(|_| ())
}

/// True if namespace `name` exists.
pub fn netns_exists(name: &str) -> bool {
    std::path::Path::new("/var/run/netns").join(name).exists()
}

fn enter_netns(name: &str) -> Result<()> {
    let path = std::path::Path::new("/var/run/netns").join(name);
    let file = std::fs::File::open(&path).map_err(|source| NetnsError::Enter {
        name: name.to_string(),
        source,
    })?;
    // SAFETY: valid fd; only this thread's namespace changes.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(NetnsError::Enter {
            name: name.to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Runs `f` on a dedicated thread entered into namespace `name` and returns
/// its result. Sockets created inside `f` belong to that namespace.
pub fn in_netns<T, F>(name: &str, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    std::thread::scope(|s| {
        let handle = s.spawn(|| -> Result<T> {
            enter_netns(name)?;
            Ok(f())
        });
        handle
            .join()
            .map_err(|_| NetnsError::ThreadPanicked(name.to_string()))?
    })
}

/// Runs `f` in namespace `ns`, or on the calling thread when `ns` is `None`.
pub fn in_optional_netns<T, F>(ns: Option<&str>, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    match ns {
        Some(name) => in_netns(name, f),
        None => Ok(f()),
    }
}

/// Spawns a long-running thread entered into namespace `name` (e.g. a
/// server). The closure gets nothing special: create sockets inside it.
pub fn spawn_in_netns<T, F>(name: &str, f: F) -> std::thread::JoinHandle<Result<T>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let name = name.to_string();
    std::thread::spawn(move || {
        enter_netns(&name)?;
        Ok(f())
    })
}

/// Enables IPv4 forwarding in namespace `ns` (`None` = the caller's).
pub fn enable_ip_forward(ns: Option<&str>) -> Result<()> {
    in_optional_netns(ns, || {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|source| NetnsError::Io {
            context: "enabling net.ipv4.ip_forward".to_string(),
            source,
        })
    })?
}

/// How to create a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    /// Pod namespace name (created).
    pub netns: String,
    /// Host-side veth name (max 15 bytes).
    pub host_ifname: String,
    /// Pod address (/32).
    pub ip: Ipv4Addr,
    /// Host-side MAC (locally administered).
    pub host_mac: [u8; 6],
    /// Pod-side MAC.
    pub pod_mac: [u8; 6],
}

/// A created pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// Pod namespace.
    pub netns: String,
    /// Host-side veth name.
    pub host_ifname: String,
    /// Host-side veth ifindex (in the host namespace).
    pub host_ifindex: u32,
    /// Pod address.
    pub ip: Ipv4Addr,
}

fn mac_str(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// Ifindex of `ifname` in namespace `ns` (`None` = the caller's).
pub fn ifindex_in(ns: Option<&str>, ifname: &str) -> Result<u32> {
    let name =
        std::ffi::CString::new(ifname).map_err(|_| NetnsError::InvalidName(ifname.to_string()))?;
    let idx = in_optional_netns(ns, || {
        // SAFETY: valid C string.
        unsafe { libc::if_nametoindex(name.as_ptr()) }
    })?;
    if idx == 0 {
        return Err(NetnsError::Io {
            context: format!("looking up interface {ifname}"),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(idx)
}

/// Creates a pod: its namespace, a veth pair whose host side lives in
/// `host_ns` (`None` = the root/caller's namespace), addresses, routes and
/// static neighbour entries. Forwarding must be enabled in the host
/// namespace ([`enable_ip_forward`]).
pub fn create_pod(host_ns: Option<&str>, spec: &PodSpec) -> Result<Pod> {
    if spec.host_ifname.len() > 15 {
        return Err(NetnsError::InvalidName(format!(
            "interface name {} is longer than 15 bytes",
            spec.host_ifname
        )));
    }
    create_netns(&spec.netns)?;
    let host_mac = mac_str(spec.host_mac);
    let pod_mac = mac_str(spec.pod_mac);
    let ip_s = spec.ip.to_string();
    let gw = GATEWAY.to_string();
    let host = spec.host_ifname.as_str();
    ip_in(
        host_ns,
        &[
            "link",
            "add",
            host,
            "address",
            &host_mac,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "address",
            &pod_mac,
            "netns",
            &spec.netns,
        ],
    )?;
    let ns = Some(spec.netns.as_str());
    ip_in(ns, &["addr", "add", &format!("{ip_s}/32"), "dev", "eth0"])?;
    ip_in(ns, &["link", "set", "eth0", "up"])?;
    ip_in(ns, &["route", "add", &gw, "dev", "eth0", "scope", "link"])?;
    ip_in(ns, &["route", "add", "default", "via", &gw, "dev", "eth0"])?;
    ip_in(
        ns,
        &[
            "neigh",
            "replace",
            &gw,
            "lladdr",
            &host_mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    )?;
    ip_in(host_ns, &["link", "set", host, "up"])?;
    ip_in(
        host_ns,
        &[
            "route",
            "replace",
            &format!("{ip_s}/32"),
            "dev",
            host,
            "scope",
            "link",
        ],
    )?;
    ip_in(
        host_ns,
        &[
            "neigh",
            "replace",
            &ip_s,
            "lladdr",
            &pod_mac,
            "dev",
            host,
            "nud",
            "permanent",
        ],
    )?;
    let host_ifindex = ifindex_in(host_ns, host)?;
    Ok(Pod {
        netns: spec.netns.clone(),
        host_ifname: spec.host_ifname.clone(),
        host_ifindex,
        ip: spec.ip,
    })
}

/// Deletes a pod (its namespace and so its veth pair).
pub fn delete_pod(pod: &Pod) -> Result<()> {
    delete_netns(&pod.netns)
}
