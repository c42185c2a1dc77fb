//! The HTTP/gRPC L7 proxy as a process of its own, supervised by the agent.
//!
//! The agent runs `palisade proxy` in the node namespace, in a process group
//! of its own, so that stopping, crashing or restarting the agent never
//! interrupts L7 traffic: the proxy keeps enforcing the last policy it was
//! fed. Everything between the two goes through files in
//! `<state_dir>/l7-proxy/`:
//!
//! | file | written by | what |
//! |---|---|---|
//! | `feed.json` | agent (atomically) | the policy to enforce ([`PolicyFeed`]); the agent sends SIGHUP after each write |
//! | `status.json` | proxy (atomically) | pid, the feed revision enforced (redirection included), counters |
//! | `records.sock` | proxy (listens) | L7 records as JSON lines; the agent connects, and again after a restart |
//! | `config.json` | agent | limits and timeouts ([`ProxyConfig`]) |
//! | `proxy.log` | proxy | its log |
//!
//! A restarted agent adopts the running proxy (found by the pid in
//! `status.json` and its command line) instead of starting another. The
//! proxy stops by itself when the state directory is removed, and
//! [`L7Process::stop`] stops it on purpose (`Agent::destroy`).

use crate::error::{AgentError, Result};
use palisade_proxy::{PolicyFeed, ProxyConfig, ProxyStatus};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// When a proxy needs the next policy: while redirect targets of its kind
/// exist, and once more after the last one is gone (so that it drops its
/// redirection). A proxy nothing is redirected to sees no traffic, so it
/// needs no new policy (and pod churn costs it no rebuild) until a target
/// appears; it then gets the whole policy. Shared by the HTTP proxy
/// process and the agent's DNS and Kafka proxies.
#[derive(Clone, Copy, Debug)]
pub struct FeedGate {
    /// The proxy may still hold redirect rules: true until a policy without
    /// targets is confirmed enforced.
    redirecting: bool,
}

impl Default for FeedGate {
    /// A proxy whose rules are unknown (just started or adopted) is fed.
    fn default() -> Self {
        FeedGate { redirecting: true }
    }
}

impl FeedGate {
    /// Whether a policy with (`redirects`) or without redirect targets of
    /// the proxy's kind must be fed to it.
    pub fn needs(&self, redirects: bool) -> bool {
        redirects || self.redirecting
    }

    /// A policy with or without targets was fed, and `confirmed` enforced
    /// (redirection included) or not (then the proxy is fed again).
    pub fn fed(&mut self, redirects: bool, confirmed: bool) {
        self.redirecting = redirects || !confirmed;
    }
}

/// A supervised proxy process.
#[derive(Debug)]
pub struct L7Process {
    dir: PathBuf,
    program: PathBuf,
    node_netns: String,
    config: ProxyConfig,
    /// Our child, when we started it (`None`: adopted from an earlier agent).
    child: Option<Child>,
    pid: u32,
    /// The revision of the last feed written.
    feed_revision: u64,
    /// The last feed the proxy confirmed (revision cleared): an equal feed
    /// is not written again, so the proxy does not rebuild for nothing.
    enforced: Option<PolicyFeed>,
    /// When it needs a new feed (HTTP redirect targets).
    gate: FeedGate,
    /// How often the proxy had to be started again.
    pub restarts: u64,
}

impl L7Process {
    pub fn feed_path(dir: &Path) -> PathBuf {
        dir.join("feed.json")
    }
    pub fn status_path(dir: &Path) -> PathBuf {
        dir.join("status.json")
    }
    pub fn records_path(dir: &Path) -> PathBuf {
        dir.join("records.sock")
    }

    /// Adopts the proxy an earlier agent left running on `dir`, or starts
    /// one; `feed` is written first, so a new proxy starts enforcing it.
    /// Returns once the proxy enforces `feed` (bounded wait).
    pub fn start_or_adopt(
        dir: &Path,
        program: &Path,
        node_netns: &str,
        config: &ProxyConfig,
        mut feed: PolicyFeed,
    ) -> Result<L7Process> {
        std::fs::create_dir_all(dir).map_err(|e| AgentError::io(dir.display().to_string(), e))?;
        let status = read_status(dir);
        let mut p = L7Process {
            dir: dir.to_path_buf(),
            program: program.to_path_buf(),
            node_netns: node_netns.to_string(),
            config: config.clone(),
            child: None,
            pid: 0,
            feed_revision: status.as_ref().and_then(|s| s.feed_revision).unwrap_or(0),
            enforced: None,
            gate: FeedGate::default(),
            restarts: 0,
        };
        let adopt = status
            .as_ref()
            .map(|s| s.pid)
            .filter(|pid| p.is_our_proxy(*pid));
        feed.revision = Some(p.next_revision());
        p.write_feed(&feed)?;
        feed.revision = None;
        match adopt {
            Some(pid) => {
                p.pid = pid;
                tracing::info!(pid, "adopted the running L7 proxy process");
                p.signal(libc::SIGHUP);
            }
            None => p.spawn()?,
        }
        if !p.wait_enforced(Duration::from_secs(10)) {
            return Err(AgentError::Conflict(format!(
                "the L7 proxy (pid {}) did not report the policy enforced within 10 s; see {}",
                p.pid,
                p.dir.join("proxy.log").display()
            )));
        }
        p.enforced = Some(feed);
        Ok(p)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// What `palisade status` shows.
    pub fn info(&mut self) -> crate::api::L7ProxyInfo {
        crate::api::L7ProxyInfo {
            pid: self.pid,
            running: self.alive(),
            restarts: self.restarts,
            feed_revision: self.feed_revision,
            status: read_status(&self.dir),
        }
    }

    fn next_revision(&mut self) -> u64 {
        self.feed_revision += 1;
        self.feed_revision
    }

    /// Whether `pid` is a `palisade proxy` serving this directory.
    fn is_our_proxy(&self, pid: u32) -> bool {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let feed = Self::feed_path(&self.dir);
        let has = |s: &[u8]| args.contains(&s);
        has(b"proxy") && has(feed.as_os_str().as_encoded_bytes()) && has(self.node_netns.as_bytes())
    }

    fn spawn(&mut self) -> Result<()> {
        let cfg_path = self.dir.join("config.json");
        let text = serde_json::to_vec_pretty(&self.config)
            .map_err(|e| AgentError::Conflict(format!("proxy config: {e}")))?;
        std::fs::write(&cfg_path, text)
            .map_err(|e| AgentError::io(cfg_path.display().to_string(), e))?;
        let log_path = self.dir.join("proxy.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| AgentError::io(log_path.display().to_string(), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| AgentError::io(log_path.display().to_string(), e))?;
        let mut cmd = Command::new(&self.program);
        cmd.arg("proxy")
            .arg("--feed")
            .arg(Self::feed_path(&self.dir))
            .arg("--node-netns")
            .arg(&self.node_netns)
            .arg("--port")
            .arg(self.config.port.to_string())
            .arg("--config")
            .arg(&cfg_path)
            .arg("--records-socket")
            .arg(Self::records_path(&self.dir))
            .arg("--status-file")
            .arg(Self::status_path(&self.dir))
            .arg("--exit-with-feed-dir");
        if !self.config.log_records {
            cmd.arg("--quiet");
        }
        if !self.config.manage_redirect {
            cmd.arg("--no-redirect");
        }
        // Its own process group: a Ctrl-C meant for the agent does not
        // reach it, and it outlives the agent.
        use std::os::unix::process::CommandExt;
        cmd.stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0);
        let child = cmd.spawn().map_err(|e| {
            AgentError::Conflict(format!(
                "starting the L7 proxy ({} proxy): {e}",
                self.program.display()
            ))
        })?;
        self.pid = child.id();
        self.child = Some(child);
        tracing::info!(pid = self.pid, log = %log_path.display(), "started the L7 proxy process");
        Ok(())
    }

    /// Whether a policy with (`redirects`) or without HTTP redirect
    /// targets must be fed to the proxy ([`FeedGate`]).
    pub fn needs_feed(&self, redirects: bool) -> bool {
        self.gate.needs(redirects)
    }

    /// Writes a new feed (the next revision) and tells the proxy; waits
    /// (bounded) until the proxy enforces it, redirection included.
    /// A feed equal to the one the proxy confirmed last is not written.
    /// `redirects`: the feed's policy has HTTP redirect targets.
    pub fn update(
        &mut self,
        mut feed: PolicyFeed,
        redirects: bool,
        wait: Duration,
    ) -> Result<bool> {
        if self.enforced.as_ref() == Some(&feed) {
            self.gate.fed(redirects, true);
            return Ok(true);
        }
        feed.revision = Some(self.next_revision());
        self.write_feed(&feed)?;
        self.signal(libc::SIGHUP);
        let enforced = self.wait_enforced(wait);
        feed.revision = None;
        self.gate.fed(redirects, enforced);
        self.enforced = enforced.then_some(feed);
        Ok(enforced)
    }

    fn write_feed(&self, feed: &PolicyFeed) -> Result<()> {
        let path = Self::feed_path(&self.dir);
        feed.write_atomically(&path)
            .map_err(|e| AgentError::Conflict(format!("writing the L7 proxy feed: {e}")))
    }

    fn signal(&self, sig: libc::c_int) {
        if let Ok(pid) = libc::pid_t::try_from(self.pid)
            && pid > 0
        {
            // SAFETY: kill(2) with a pid we started or verified.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    /// Waits until the status file says the last feed written is enforced
    /// (or was rejected, or the proxy died).
    fn wait_enforced(&mut self, limit: Duration) -> bool {
        let want = self.feed_revision;
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = read_status(&self.dir)
                && s.pid == self.pid
            {
                if s.feed_revision.is_some_and(|r| r >= want) {
                    return true;
                }
                if s.rejected_feed_revision.is_some_and(|r| r >= want) {
                    tracing::error!(
                        reason = s.rejected_reason.as_deref().unwrap_or("-"),
                        "the L7 proxy rejected the feed; it keeps the previous policy"
                    );
                    return false;
                }
            }
            if !self.alive() || Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Whether the process runs.
    pub fn alive(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => self.is_our_proxy(self.pid),
        }
    }

    /// Starts the proxy again if it died, feeding it `feed`; returns
    /// whether it had to.
    pub fn ensure_running(&mut self, feed: impl FnOnce() -> PolicyFeed) -> Result<bool> {
        if self.alive() {
            return Ok(false);
        }
        tracing::warn!(
            pid = self.pid,
            "the L7 proxy process is gone; starting it again"
        );
        self.restarts += 1;
        let mut f = feed();
        f.revision = Some(self.next_revision());
        self.write_feed(&f)?;
        self.spawn()?;
        f.revision = None;
        self.enforced = self.wait_enforced(Duration::from_secs(10)).then_some(f);
        Ok(true)
    }

    /// Stops the proxy (SIGTERM; SIGKILL after 5 s): it removes its
    /// redirection, so L7 traffic is no longer intercepted.
    pub fn stop(mut self) {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if self.alive() {
            self.signal(libc::SIGKILL);
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }
}

/// Stops a proxy an earlier agent left running on `dir` (an agent started
/// without L7 proxies must not leave an old policy enforced by one).
/// Returns its pid when there was one.
pub fn stop_leftover(dir: &Path, program: &Path, node_netns: &str) -> Option<u32> {
    let pid = read_status(dir)?.pid;
    let p = L7Process {
        dir: dir.to_path_buf(),
        program: program.to_path_buf(),
        node_netns: node_netns.to_string(),
        config: ProxyConfig::default(),
        child: None,
        pid,
        feed_revision: 0,
        enforced: None,
        gate: FeedGate::default(),
        restarts: 0,
    };
    if !p.is_our_proxy(pid) {
        return None;
    }
    p.stop();
    Some(pid)
}

/// The proxy's status file, if it can be read.
pub fn read_status(dir: &Path) -> Option<ProxyStatus> {
    let text = std::fs::read(L7Process::status_path(dir)).ok()?;
    serde_json::from_slice(&text).ok()
}
