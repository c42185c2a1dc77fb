//! `palisade proxy`: the L7 proxy as its own process, so that restarting
//! the agent does not break L7 traffic. It reads its policy from the
//! agent's feed file (or, standalone, from a manifest directory), installs
//! TPROXY redirection in the node namespace and enforces HTTP/gRPC rules.

use anyhow::{Context, Result};
use clap::Args;
use palisade_proxy::{FeedSource, ProxyConfig, ProxyHandle, ProxyOptions, RecordSink};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

pub const AFTER_HELP: &str = "`palisade agent` starts and supervises this process itself (files in \
STATE_DIR/l7-proxy/: feed.json, status.json, records.sock, proxy.log) and adopts it after an agent restart; run it \
by hand only to use it standalone. The feed (JSON: localNode, endpoints, files + documents, fqdns) is replaced \
atomically; the proxy reloads it when it changes and on SIGHUP, and an invalid feed is rejected whole (the previous \
policy stays, the status file says why). SIGINT/SIGTERM stop the proxy and remove its nftables table and routing \
(with the agent's fail-closed guard in place, redirected traffic then gets no answer).\n\nExamples:\n  \
palisade proxy --manifests lab/ --node-netns palisade-node --records -\n  \
palisade proxy --feed /var/lib/palisade/l7-proxy/feed.json --node-netns palisade-node --status-file /tmp/proxy-status.json";

#[derive(Args, Debug)]
pub struct ProxyArgs {
    /// The agent's policy feed file (JSON snapshot, replaced atomically).
    #[arg(
        long,
        conflicts_with = "manifests",
        required_unless_present = "manifests"
    )]
    feed: Option<PathBuf>,
    /// Standalone: a manifest file or directory (cluster state and policies), reloaded on change.
    #[arg(long)]
    manifests: Option<PathBuf>,
    /// With --manifests: only pods on this node are endpoints.
    #[arg(long)]
    local_node: Option<String>,
    /// The node network namespace to run in (default: the current one).
    #[arg(long)]
    node_netns: Option<String>,
    /// TPROXY listening port.
    #[arg(long, default_value_t = palisade_proxy::config::DEFAULT_PORT)]
    port: u16,
    /// Runtime worker threads (default: one per CPU).
    #[arg(long)]
    workers: Option<usize>,
    /// Do not install the nftables TPROXY rules and policy routing.
    #[arg(long)]
    no_redirect: bool,
    /// Limits and timeouts as JSON (ProxyConfig fields, camelCase; durations in ms).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Write every L7 record as a JSON line to this file (`-`: stdout).
    #[arg(long, conflicts_with = "records_socket")]
    records: Option<String>,
    /// Serve the L7 records to the agent on this unix socket (the agent
    /// connects and reconnects after a restart; records wait in a bounded
    /// queue meanwhile, and overflow is reported as lost).
    #[arg(long)]
    records_socket: Option<PathBuf>,
    /// Write the proxy's status (pid, the feed revision enforced, counters)
    /// to this JSON file whenever it changes.
    #[arg(long)]
    status_file: Option<PathBuf>,
    /// With --feed: stop when the feed file's directory disappears (the
    /// agent's state was removed).
    #[arg(long, requires = "feed")]
    exit_with_feed_dir: bool,
    /// Do not log every L7 record.
    #[arg(long)]
    quiet: bool,
    /// Log filter (tracing EnvFilter syntax; RUST_LOG overrides).
    #[arg(long, default_value = "info")]
    log: String,
}

pub fn run(a: ProxyArgs) -> Result<ExitCode> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&a.log));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let mut config = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("{}", p.display()))?;
            serde_json::from_str::<ProxyConfig>(&text)
                .with_context(|| format!("{}: invalid proxy config", p.display()))?
        }
        None => ProxyConfig::default(),
    };
    config.port = a.port;
    config.manage_redirect = !a.no_redirect;
    config.log_records = !a.quiet;
    let feed = match (a.feed, a.manifests) {
        (Some(f), _) => FeedSource::File(f),
        (None, Some(dir)) => FeedSource::ManifestDir {
            dir,
            local_node: a.local_node,
        },
        (None, None) => anyhow::bail!("give --feed FILE or --manifests DIR"),
    };
    let sink = match (a.records.as_deref(), &a.records_socket) {
        (Some(path), _) => record_writer(path)?,
        (None, Some(sock)) => palisade_proxy::relay::listen(sock, 65_536)
            .with_context(|| format!("records socket {}", sock.display()))?,
        (None, None) => RecordSink::none(),
    };
    let handle = ProxyHandle::spawn(ProxyOptions {
        config,
        netns: a.node_netns,
        workers: a.workers,
        sink,
        initial: None,
        feed: Some(feed),
        feed_poll: None,
        handle_signals: true,
        status_file: a.status_file,
        exit_without_feed_dir: a.exit_with_feed_dir,
    })?;
    eprintln!(
        "palisade proxy listening on {} (policy revision {})",
        handle.local_addr(),
        handle.revision()
    );
    handle.join();
    Ok(ExitCode::SUCCESS)
}

/// Records go through a bounded channel to a writer thread, so a slow
/// reader never slows the proxy (records beyond the bound are dropped).
fn record_writer(path: &str) -> Result<RecordSink> {
    let mut out: Box<dyn Write + Send> = if path == "-" {
        Box::new(std::io::stdout())
    } else {
        Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| path.to_string())?,
        )
    };
    let (sink, mut rx) = RecordSink::channel(65_536);
    std::thread::Builder::new()
        .name("palisade-records".into())
        .spawn(move || {
            while let Some(r) = rx.blocking_recv() {
                let Ok(line) = serde_json::to_string(&r) else {
                    continue;
                };
                if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                    break;
                }
            }
        })?;
    Ok(sink)
}
