//! The record relay: how L7 records get from the proxy process to the agent.
//!
//! The proxy listens on a unix socket in the agent's state directory and
//! writes one JSON line per record to the agent connected to it: the agent
//! connects when it starts and again after a restart. While no agent is
//! connected, records wait in a bounded queue; those that do not fit (or
//! were in flight when a connection broke) are counted and reported to the
//! next agent as a `{"lost": N}` line, so that no loss is silent.
//!
//! ```text
//! {"record": {...L7Record...}}
//! {"lost": 12}
//! ```
//!
//! A newer connection replaces an older one (a restarted agent never waits
//! behind its dead predecessor).

use crate::record::{L7Record, RecordSink};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::{BufRead, ErrorKind, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// One line of the relay stream.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RelayLine {
    Record(Box<L7Record>),
    /// Records the proxy could not deliver since the previous line.
    Lost(u64),
}

#[derive(Default)]
struct Queue {
    items: VecDeque<L7Record>,
    lost: u64,
}

/// Binds `path` (replacing a stale socket) and returns the sink the proxy
/// emits into; a thread serves the connected agent. `capacity` records wait
/// while no agent is connected.
pub fn listen(path: &Path, capacity: usize) -> std::io::Result<RecordSink> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    let q = Arc::new((Mutex::new(Queue::default()), Condvar::new()));
    let q2 = q.clone();
    let capacity = capacity.max(1);
    let sink = RecordSink::callback(move |r| {
        let (m, cv) = &*q2;
        let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
        if g.items.len() >= capacity {
            g.lost += 1;
        } else {
            g.items.push_back(r);
        }
        drop(g);
        cv.notify_one();
    });
    let path = path.to_path_buf();
    std::thread::Builder::new()
        .name("palisade-relay".into())
        .spawn(move || serve(listener, &path, &q))?;
    Ok(sink)
}

fn serve(listener: UnixListener, path: &Path, q: &(Mutex<Queue>, Condvar)) {
    let (m, cv) = q;
    let mut conn: Option<std::io::BufWriter<UnixStream>> = None;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                if s.set_nonblocking(false).is_ok()
                    && s.set_write_timeout(Some(Duration::from_secs(5))).is_ok()
                {
                    tracing::info!(target: "palisade::proxy", "{}: agent connected", path.display());
                    conn = Some(std::io::BufWriter::with_capacity(64 * 1024, s));
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => {
                tracing::warn!(target: "palisade::proxy", "{}: accept: {e}", path.display());
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let (batch, lost) = {
            let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
            if g.items.is_empty() && g.lost == 0 || conn.is_none() {
                g = cv
                    .wait_timeout(g, Duration::from_millis(100))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            if conn.is_none() {
                continue;
            }
            let n = g.items.len().min(1024);
            let batch: Vec<L7Record> = g.items.drain(..n).collect();
            (batch, std::mem::take(&mut g.lost))
        };
        if batch.is_empty() && lost == 0 {
            continue;
        }
        let Some(w) = conn.as_mut() else { continue };
        let sent = write_batch(w, lost, batch);
        if let Err(unsent) = sent {
            tracing::info!(target: "palisade::proxy", "{}: agent went away", path.display());
            m.lock().unwrap_or_else(|p| p.into_inner()).lost += unsent;
            conn = None;
        }
    }
}

/// Writes the lost count and the records; on failure returns how many
/// were not (surely) delivered.
fn write_batch(
    w: &mut std::io::BufWriter<UnixStream>,
    lost: u64,
    batch: Vec<L7Record>,
) -> Result<(), u64> {
    let total = lost + batch.len() as u64;
    fn line(w: &mut impl Write, l: &RelayLine) -> std::io::Result<()> {
        serde_json::to_writer(&mut *w, l)?;
        w.write_all(b"\n")
    }
    let mut r = Ok(());
    if lost > 0 {
        r = line(w, &RelayLine::Lost(lost));
    }
    for rec in batch {
        if r.is_err() {
            break;
        }
        r = line(w, &RelayLine::Record(Box::new(rec)));
    }
    r.and_then(|()| w.flush()).map_err(|_| total)
}

/// The agent's end: connects to `path` and calls `on_line` for every line,
/// reconnecting until `stop` returns true. Blocking; run it on a thread.
pub fn follow(path: &Path, stop: impl Fn() -> bool, mut on_line: impl FnMut(RelayLine)) {
    let mut was_connected = false;
    while !stop() {
        let s = match UnixStream::connect(path) {
            Ok(s) => s,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if !was_connected {
            tracing::info!(target: "palisade::proxy", "{}: following the proxy's records", path.display());
            was_connected = true;
        }
        if s.set_read_timeout(Some(Duration::from_millis(200)))
            .is_err()
        {
            continue;
        }
        let mut r = std::io::BufReader::with_capacity(64 * 1024, s);
        let mut buf = Vec::new();
        while !stop() {
            match r.read_until(b'\n', &mut buf) {
                Ok(0) => break,
                Ok(_) if buf.ends_with(b"\n") => {
                    match serde_json::from_slice::<RelayLine>(&buf) {
                        Ok(l) => on_line(l),
                        Err(e) => tracing::warn!(target: "palisade::proxy", "bad relay line: {e}"),
                    }
                    buf.clear();
                }
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{L7Peer, L7Verdict};
    use std::sync::atomic::{AtomicBool, Ordering};

    fn record(i: u16) -> L7Record {
        let peer = |port| L7Peer {
            ip: "10.0.0.1".parse().unwrap(),
            port,
            identity: 300,
            labels: Arc::from(vec!["k8s:app=x".to_string()]),
            endpoint: Some("default/x".into()),
        };
        L7Record {
            time: std::time::SystemTime::now(),
            source: peer(i),
            destination: peer(80),
            direction: None,
            endpoint: None,
            method: "GET".into(),
            url: format!("http://x/{i}"),
            protocol: "HTTP/1.1".into(),
            status: Some(200),
            grpc_status: None,
            latency_ns: 1,
            verdict: L7Verdict::Forwarded,
            rules: vec![],
            policy_revision: 1,
        }
    }

    #[test]
    fn records_wait_for_the_agent_and_overflow_is_reported() {
        let dir = std::env::temp_dir().join(format!("palisade-relay-{}", std::process::id()));
        let path = dir.join("records.sock");
        let sink = listen(&path, 10).expect("listen");
        // No agent yet: 10 wait, 5 are lost.
        for i in 0..15 {
            sink.emit(record(i), false);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let got = Arc::new(Mutex::new((Vec::new(), 0u64)));
        let (s2, g2, p2) = (stop.clone(), got.clone(), path.clone());
        let t = std::thread::spawn(move || {
            follow(
                &p2,
                || s2.load(Ordering::Relaxed),
                |l| {
                    let mut g = g2.lock().unwrap();
                    match l {
                        RelayLine::Record(r) => g.0.push(r.source.port),
                        RelayLine::Lost(n) => g.1 += n,
                    }
                },
            )
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while got.lock().unwrap().0.len() < 10 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Connected: later records arrive too, in order.
        sink.emit(record(100), false);
        while got.lock().unwrap().0.len() < 11 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
        let g = got.lock().unwrap();
        assert_eq!(g.0, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 100]);
        assert_eq!(g.1, 5, "the 5 records that did not fit are reported lost");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
