//! The agent as a real process, driven through the CLI: pods, exec exit
//! status, policy apply/delete, invalid updates (manifests directory and
//! API) rejected with the last good policy still enforced, and SIGKILL of
//! the agent during traffic (established connections keep working, denied
//! traffic stays denied, the restarted agent adopts the pinned state and
//! converges). Needs root; skipped otherwise.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use palisade_agent::api::PodInfo;
use palisade_agent::traffic::{self, Outcome, Servers, wait_until};

const T: Duration = Duration::from_millis(400);
const BIN: &str = env!("CARGO_BIN_EXE_palisade");

struct Env {
    tag: String,
    node_netns: String,
    pin_root: PathBuf,
    state_dir: PathBuf,
    manifests: PathBuf,
    socket: PathBuf,
    child: Option<Child>,
}

static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Env {
    fn new() -> Env {
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("{}-{n}", std::process::id());
        let base = std::env::temp_dir().join(format!("palisade-cli-agent-{tag}"));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("manifests")).expect("tmp dirs");
        Env {
            node_netns: format!("pal-cli-{tag}"),
            pin_root: PathBuf::from(format!("/sys/fs/bpf/palisade-cli-test-{tag}")),
            state_dir: base.join("state"),
            manifests: base.join("manifests"),
            socket: base.join("agent.sock"),
            tag,
            child: None,
        }
    }

    fn start_agent(&mut self) {
        self.start_agent_with(&[]);
    }

    fn start_agent_with(&mut self, extra: &[&str]) {
        let child = Command::new(BIN)
            .args([
                "agent",
                "--node-name",
                "node-t",
                "--pod-cidr",
                "10.241.0.0/24",
            ])
            .arg("--node-netns")
            .arg(&self.node_netns)
            .arg("--pin-root")
            .arg(&self.pin_root)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--manifests")
            .arg(&self.manifests)
            .arg("--socket")
            .arg(&self.socket)
            .args(["--web-listen", "off"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn agent");
        self.child = Some(child);
        assert!(
            wait_until(Duration::from_secs(20), || self
                .cli(&["status"])
                .status
                .success()),
            "agent did not come up"
        );
    }

    fn kill_agent(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    fn cli(&self, args: &[&str]) -> Output {
        // `--socket` goes before a `--` (after it, everything is the command)
        let split = args.iter().position(|a| *a == "--").unwrap_or(args.len());
        Command::new(BIN)
            .args(&args[..split])
            .arg("--socket")
            .arg(&self.socket)
            .args(&args[split..])
            .output()
            .expect("run palisade")
    }

    fn pod(&self, key: &str) -> PodInfo {
        let out = self.cli(&["pod", "list", "-o", "json"]);
        let pods: Vec<PodInfo> = serde_json::from_slice(&out.stdout).expect("pod list json");
        pods.into_iter().find(|p| p.pod == key).expect("pod listed")
    }

    fn proxy_status(&self) -> Option<palisade_proxy::ProxyStatus> {
        palisade_agent::l7proc::read_status(&self.state_dir.join("l7-proxy"))
    }

    fn status_json(&self) -> serde_json::Value {
        let out = self.cli(&["status", "-o", "json"]);
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.kill_agent();
        if let Some(pid) = self.proxy_status().map(|s| s.pid) {
            // SAFETY: kill(2); the pid is the test's own proxy process.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
        palisade_agent::purge(&self.node_netns, &self.pin_root);
        let _ = std::fs::remove_dir_all(
            std::env::temp_dir().join(format!("palisade-cli-agent-{}", self.tag)),
        );
    }
}

fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn policy(name: &str, from_app: &str) -> String {
    format!(
        r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: {name}
  namespace: default
spec:
  endpointSelector:
    matchLabels:
      app: server
  ingress:
    - fromEndpoints:
        - matchLabels:
            app: {from_app}
      toPorts:
        - ports:
            - port: "80"
              protocol: TCP
"#
    )
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write manifest");
}

#[test]
fn agent_pods_policy_invalid_updates_and_sigkill() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let mut env = Env::new();
    write(
        &env.manifests.join("server.yaml"),
        &policy("server-ingress", "client"),
    );
    env.start_agent();

    for (p, l) in [
        ("default/client", "app=client"),
        ("default/other", "app=other"),
        ("default/server", "app=server"),
    ] {
        let out = env.cli(&["pod", "run", p, "--labels", l, "--port", "http:80/TCP"]);
        assert!(out.status.success(), "pod run {p}: {out:?}");
    }
    let client = env.pod("default/client");
    let other = env.pod("default/other");
    let server = env.pod("default/server");
    let _srv = Servers::start(&server.netns, &[80, 81], &[]).expect("servers");
    let sip: Ipv4Addr = server.ip;

    // (d) pod exec returns the command's exit status
    let out = env.cli(&["pod", "exec", "default/client", "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let out = env.cli(&["pod", "exec", "default/client", "--", "true"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    // the manifests directory's policy is enforced
    assert_eq!(
        traffic::tcp_probe(&client.netns, sip, 80, T),
        Outcome::Allowed
    );
    assert_eq!(
        traffic::tcp_probe(&other.netns, sip, 80, T),
        Outcome::Dropped
    );
    let ep = env.cli(&["endpoint", "list"]);
    assert!(
        String::from_utf8_lossy(&ep.stdout).contains("ready"),
        "{ep:?}"
    );
    let bpf = env.cli(&["bpf", "policy", "get", "default/server"]);
    let bpf_text = String::from_utf8_lossy(&bpf.stdout);
    assert!(bpf_text.contains("server-ingress"), "{bpf_text}");

    // (c) an invalid change through the manifests directory is rejected whole
    let generation = env.status_json()["manifestsGeneration"]
        .as_u64()
        .unwrap_or(0);
    write(
        &env.manifests.join("server.yaml"),
        &policy("server-ingress", "other").replace("toPorts:", "toPortz:"),
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            let s = env.status_json();
            s["manifestsGeneration"].as_u64().unwrap_or(0) > generation
                && s["manifestsErrors"]
                    .as_array()
                    .is_some_and(|a| !a.is_empty())
        }),
        "the invalid manifest was not reported"
    );
    assert_eq!(env.cli(&["status"]).status.code(), Some(0));
    assert_eq!(
        traffic::tcp_probe(&client.netns, sip, 80, T),
        Outcome::Allowed
    );
    assert_eq!(
        traffic::tcp_probe(&other.netns, sip, 80, T),
        Outcome::Dropped
    );
    write(
        &env.manifests.join("server.yaml"),
        &policy("server-ingress", "client"),
    );

    // ... and through the API, with file:line:col
    let bad = env.manifests.parent().expect("base").join("bad.yaml");
    write(
        &bad,
        &policy("allow-other", "other").replace("port: \"80\"", "port: \"99999\""),
    );
    let out = env.cli(&["policy", "apply", "-f", bad.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml:") && err.contains("port"), "{err}");
    assert_eq!(
        traffic::tcp_probe(&other.netns, sip, 80, T),
        Outcome::Dropped
    );

    // (b) SIGKILL during traffic
    let mut established = traffic::tcp_connect(&client.netns, sip, 80, T).expect("client connects");
    assert_eq!(
        traffic::echo(&mut established, b"before\n", T),
        Outcome::Allowed
    );
    env.kill_agent();
    assert_eq!(
        traffic::echo(&mut established, b"while-down\n", T),
        Outcome::Allowed
    );
    assert_eq!(
        traffic::tcp_probe(&client.netns, sip, 80, T),
        Outcome::Allowed
    );
    assert_eq!(
        traffic::tcp_probe(&other.netns, sip, 80, T),
        Outcome::Dropped
    );
    assert_eq!(
        traffic::tcp_probe(&client.netns, sip, 81, T),
        Outcome::Dropped
    );

    env.start_agent();
    assert_eq!(
        traffic::echo(&mut established, b"after\n", T),
        Outcome::Allowed
    );
    assert_eq!(
        traffic::tcp_probe(&other.netns, sip, 80, T),
        Outcome::Dropped
    );
    let pods = env.cli(&["pod", "list"]);
    assert!(String::from_utf8_lossy(&pods.stdout).contains("default/server"));
    // a change after the restart is enforced
    let good = env.manifests.parent().expect("base").join("good.yaml");
    write(&good, &policy("allow-other", "other"));
    let out = env.cli(&["policy", "apply", "-f", good.to_str().expect("utf8")]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        traffic::tcp_probe(&other.netns, sip, 80, T),
        Outcome::Allowed
    );
    assert_eq!(
        traffic::echo(&mut established, b"still\n", T),
        Outcome::Allowed
    );
    let out = env.cli(&["policy", "delete", "-f", good.to_str().expect("utf8")]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        traffic::tcp_probe(&other.netns, sip, 80, T),
        Outcome::Dropped
    );

    let out = env.cli(&["pod", "delete", "default/other"]);
    assert!(out.status.success(), "{out:?}");
    env.kill_agent();
    // with the agent gone, `status` reports it
    assert_eq!(env.cli(&["status"]).status.code(), Some(1));
}

const L7_POLICY: &str = include_str!("data/example-policy-l7.yaml");

/// Whether `pid`'s SigIgn mask holds SIGPIPE.
fn ignores_sigpipe(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|m| m & (1 << (libc::SIGPIPE - 1)) != 0)
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// The HTTP proxy is a process of its own: SIGKILL of the agent leaves L7
/// enforcement in place (old and new connections), the restarted agent
/// adopts the same proxy and feeds it, and the supervisor restarts a
/// proxy that died.
#[test]
fn l7_proxy_process_survives_agent_sigkill_and_is_restarted_when_it_dies() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let mut env = Env::new();
    write(&env.manifests.join("l7.yaml"), L7_POLICY);
    env.start_agent();
    for (p, l) in [
        ("default/frontend", "app=frontend"),
        ("default/myapp", "app=myapp"),
    ] {
        let out = env.cli(&["pod", "run", p, "--labels", l, "--port", "http:80/TCP"]);
        assert!(out.status.success(), "pod run {p}: {out:?}");
    }
    let fe = env.pod("default/frontend");
    let app = env.pod("default/myapp");
    let _srv = traffic::HttpServer::start(&app.netns, 80).expect("http server");
    let t = Duration::from_secs(2);
    let get = |path: &str| {
        traffic::http_request(&fe.netns, app.ip, 80, "GET", path, &[], t)
            .map(|a| a.status)
            .unwrap_or(0)
    };
    let enforced = |allowed: &str, denied: &str| {
        wait_until(Duration::from_secs(10), || {
            get(allowed) == 200 && get(denied) == 403
        })
    };
    assert!(enforced("/public", "/private"), "L7 policy enforced");
    let proxy = env.proxy_status().expect("proxy status").pid;
    assert!(pid_alive(proxy));

    // A peer that resets mid-response costs a connection (EPIPE), never
    // the process: the proxy and the agent ignore SIGPIPE.
    let agent_pid = env.child.as_ref().expect("agent").id();
    for (what, pid) in [("proxy", proxy), ("agent", agent_pid)] {
        assert!(ignores_sigpipe(pid), "the {what} ignores SIGPIPE");
    }

    // The agent dies: the proxy keeps enforcing, new connections included.
    env.kill_agent();
    assert!(pid_alive(proxy), "the proxy outlives the agent");
    assert_eq!(get("/public"), 200);
    assert_eq!(get("/private"), 403);

    // The restarted agent adopts the same proxy and feeds it.
    env.start_agent();
    assert_eq!(env.proxy_status().expect("status").pid, proxy, "adopted");
    let status = String::from_utf8_lossy(&env.cli(&["status"]).stdout).into_owned();
    assert!(
        status.contains(&format!("L7 proxy:     running (pid {proxy},")),
        "{status}"
    );
    let policy = env.manifests.join("l7.yaml");
    write(&policy, &L7_POLICY.replace("/public", "/private"));
    assert!(
        enforced("/private", "/public"),
        "a change after the restart reaches the adopted proxy"
    );
    assert!(pid_alive(proxy));
    // Its records reach the new agent as L7 flows.
    let flows = || {
        let out = env.cli(&["observe", "--protocol", "http", "-o", "jsonpb"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        wait_until(Duration::from_secs(5), || {
            let f = flows();
            f.contains("/private") && f.contains("FORWARDED") && f.contains("example-policy")
        }),
        "{}",
        flows()
    );

    // The proxy dies: the supervisor starts another, fed the same policy.
    // SAFETY: kill(2) of the test's own proxy process.
    unsafe {
        libc::kill(proxy as libc::pid_t, libc::SIGKILL);
    }
    assert!(
        wait_until(Duration::from_secs(10), || env
            .proxy_status()
            .is_some_and(|s| s.pid != proxy && pid_alive(s.pid))),
        "a new proxy process"
    );
    assert!(enforced("/private", "/public"), "the new proxy enforces");

    // Agent and proxy both gone (the proxy stopped cleanly, removing its
    // redirection): L7 rules fail closed, nothing bypasses the proxy.
    let second = env.proxy_status().expect("status").pid;
    env.kill_agent();
    // SAFETY: kill(2) of the test's own proxy process.
    unsafe {
        libc::kill(second as libc::pid_t, libc::SIGTERM);
    }
    assert!(wait_until(Duration::from_secs(10), || !pid_alive(second)));
    assert_eq!(get("/private"), 0, "no answer: the guard drops it");
    assert_eq!(get("/public"), 0);

    // An agent started with --no-l7-proxy removes the guard, and says that
    // the L7 rules are unenforced.
    env.start_agent_with(&["--no-l7-proxy"]);
    assert_eq!(get("/public"), 200);
    let status = String::from_utf8_lossy(&env.cli(&["status"]).stdout).into_owned();
    assert!(
        status.contains("example-policy: its L7 rules are not enforced"),
        "{status}"
    );
    // and does not leave an old proxy enforcing an old policy
    env.kill_agent();
    env.start_agent();
    let third = env.proxy_status().expect("status").pid;
    env.kill_agent();
    env.start_agent_with(&["--no-l7-proxy"]);
    assert!(!pid_alive(third), "the leftover proxy was stopped");
}
