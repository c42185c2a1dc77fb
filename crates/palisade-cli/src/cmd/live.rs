//! Shared bits of the commands that talk to a running agent: the
//! `--socket` flag, tables, signals.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use palisade_agent::Client;

/// `--socket PATH` of every client command.
#[derive(clap::Args, Clone, Debug)]
pub struct SocketArg {
    /// The agent's API socket.
    #[arg(long, default_value = palisade_agent::config::DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

impl SocketArg {
    pub fn client(&self) -> Client {
        Client::new(self.socket.clone())
    }
}

/// Output format of listing commands.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

/// Prints rows as aligned columns.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let n = cells.len();
        let mut s = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            if i + 1 == n {
                s.push_str(&c);
            } else {
                let pad = widths[i].saturating_sub(c.chars().count());
                s.push_str(&c);
                s.push_str(&" ".repeat(pad + 3));
            }
        }
        println!("{}", s.trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

/// Prints JSON.
pub fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Installs SIGINT/SIGTERM handlers that set a flag (checked with [`stopping`]).
pub fn install_stop_signals() {
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
}

/// Whether SIGINT/SIGTERM arrived.
pub fn stopping() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Whether we run as root.
pub fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Sets up `tracing` output on stderr (RUST_LOG or `default`).
pub fn init_logs(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Prints an agent error with its diagnostics and returns exit code 1.
pub fn report(e: &palisade_agent::AgentError) -> std::process::ExitCode {
    eprintln!("error: {e}");
    for d in e.diagnostics() {
        eprintln!("  {d}");
    }
    std::process::ExitCode::from(1)
}
