//! Open-loop HTTP/1.1 load at a fixed rate for `bench/l7-proxy.sh`:
//! latency is measured from each request's *scheduled* send time (no
//! coordinated omission), once every connection is open. Usage:
//! `loadgen ADDR:PORT PATH RATE_PER_S CONNECTIONS SECONDS` → prints
//! `sent ok p50_us p99_us`. With `max` as the rate, each connection sends
//! its next request as soon as the last is answered (closed loop, for
//! SECONDS of wall time): `ok / SECONDS` is the most this request pattern
//! gets through, and the percentiles are plain response times.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 6 {
        eprintln!("usage: loadgen ADDR:PORT PATH RATE CONNECTIONS SECONDS");
        std::process::exit(2);
    }
    let addr = a[1].clone();
    let path = a[2].clone();
    let closed = a[3] == "max";
    let rate: f64 = if closed {
        f64::INFINITY
    } else {
        a[3].parse().unwrap_or(1000.0)
    };
    let conns: usize = a[4].parse().unwrap_or(10);
    let secs: f64 = a[5].parse().unwrap_or(5.0);
    let per_conn = Duration::from_secs_f64(conns as f64 / rate);
    // Every connection is open before the schedule starts, so that a slow
    // connect is not counted as request latency.
    let connected = Arc::new(Barrier::new(conns + 1));
    let start_at: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let go = Arc::new(Barrier::new(conns + 1));
    let threads: Vec<_> = (0..conns)
        .map(|i| {
            let addr = addr.clone();
            let (connected, start_at, go) = (connected.clone(), start_at.clone(), go.clone());
            let req = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").into_bytes();
            std::thread::spawn(move || {
                // Sleep until each send time with 1 ns of timer slack
                // (the default 50 us would count as latency).
                // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this
                // thread's timer slack.
                unsafe {
                    libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
                }
                let mut lat = Vec::new();
                let mut sent = 0u64;
                let stream = TcpStream::connect(&addr);
                connected.wait();
                go.wait();
                let Ok(mut s) = stream else {
                    return (sent, lat);
                };
                let Some(&start) = start_at.get() else {
                    return (sent, lat);
                };
                let end = start + Duration::from_secs_f64(secs);
                let _ = s.set_nodelay(true);
                let mut buf = vec![0u8; 4096];
                let mut due = start + per_conn.mul_f64(i as f64 / conns as f64);
                while due < end {
                    let now = Instant::now();
                    if closed {
                        due = now;
                    } else if due > now {
                        std::thread::sleep(due - now);
                    }
                    sent += 1;
                    if s.write_all(&req).is_err() {
                        break;
                    }
                    if !read_response(&mut s, &mut buf) {
                        break;
                    }
                    lat.push(due.elapsed().as_micros() as u64);
                    due += per_conn;
                }
                (sent, lat)
            })
        })
        .collect();
    connected.wait();
    let _ = start_at.set(Instant::now() + Duration::from_millis(10));
    go.wait();
    let mut all = Vec::new();
    let mut sent = 0;
    for t in threads {
        if let Ok((s, l)) = t.join() {
            sent += s;
            all.extend(l);
        }
    }
    all.sort_unstable();
    let pct = |p: f64| {
        if all.is_empty() {
            0
        } else {
            all[((all.len() as f64 * p) as usize).min(all.len() - 1)]
        }
    };
    println!("{sent} {} {} {}", all.len(), pct(0.50), pct(0.99));
}

/// Reads one response with a Content-Length body.
fn read_response(s: &mut TcpStream, buf: &mut [u8]) -> bool {
    let mut got = Vec::new();
    loop {
        let Ok(n) = s.read(buf) else { return false };
        if n == 0 {
            return false;
        }
        got.extend_from_slice(&buf[..n]);
        if let Some(h) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..h]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if got.len() >= h + 4 + len {
                return true;
            }
        }
    }
}
