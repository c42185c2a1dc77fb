//! `palisade fqdn cache list`: the names the DNS proxy learned, per
//! endpoint, with their TTL, expiry and addresses (Cilium's `fqdn cache
//! list`).

use anyhow::Context;
use palisade_proxy::dns::CacheRow;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::ExitCode;

/// Output format.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

#[derive(clap::Subcommand)]
pub enum FqdnCommand {
    /// The FQDN cache.
    #[command(subcommand)]
    Cache(CacheCommand),
}

#[derive(clap::Subcommand)]
pub enum CacheCommand {
    /// List learned names: Endpoint, Source, FQDN, TTL, ExpirationTime, IPs.
    #[command(
        after_help = "Examples:\n  palisade fqdn cache list\n  palisade fqdn cache list --endpoint default/crawler -o json\n  palisade fqdn cache list --input-file cache.json"
    )]
    List {
        /// The agent's API socket.
        #[arg(long, default_value = palisade_agent::config::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Read the rows (JSON array) from a file instead of the agent; `-` for stdin.
        #[arg(long)]
        input_file: Option<String>,
        /// Only this endpoint (NAMESPACE/POD).
        #[arg(long)]
        endpoint: Option<String>,
        /// Only names containing this text.
        #[arg(long)]
        name: Option<String>,
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

pub fn run(c: FqdnCommand) -> anyhow::Result<ExitCode> {
    match c {
        FqdnCommand::Cache(CacheCommand::List {
            socket,
            input_file,
            endpoint,
            name,
            output,
        }) => {
            let mut rows = match input_file {
                Some(path) => read_rows(&path)?,
                None => from_agent(&socket)?,
            };
            rows.retain(|r| {
                endpoint.as_deref().is_none_or(|e| r.endpoint == e)
                    && name
                        .as_deref()
                        .is_none_or(|n| r.fqdn.contains(&n.to_ascii_lowercase()))
            });
            match output {
                Format::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
                Format::Table => {
                    let (headers, body) = render(&rows);
                    print!("{}", table(&headers, &body));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn read_rows(path: &str) -> anyhow::Result<Vec<CacheRow>> {
    let text = if path == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?
    };
    serde_json::from_str(&text)
        .with_context(|| format!("{path}: expected a JSON array of cache rows"))
}

/// Asks the agent (`{"op":"fqdn-cache-list"}` on its JSON-lines socket).
fn from_agent(path: &std::path::Path) -> anyhow::Result<Vec<CacheRow>> {
    let mut s = std::os::unix::net::UnixStream::connect(path).with_context(|| {
        format!(
            "connecting to the agent at {} (is `palisade agent` running?)",
            path.display()
        )
    })?;
    s.write_all(b"{\"op\":\"fqdn-cache-list\"}\n")?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line)?;
    let v: serde_json::Value =
        serde_json::from_str(&line).context("the agent's answer is not JSON")?;
    if v.get("ok").and_then(|o| o.as_bool()) != Some(true) {
        let err = v
            .get("error")
            .and_then(|e| e.as_str())
            .unwrap_or("unknown error");
        anyhow::bail!(
            "the agent did not return its FQDN cache ({err}); the agent serves it when its DNS proxy runs (not with `palisade agent --no-l7-proxy`); or use --input-file with the DNS proxy's cache rows"
        );
    }
    Ok(serde_json::from_value(
        v.get("result").cloned().unwrap_or_default(),
    )?)
}

/// The table: one line per (endpoint, name).
pub fn render(rows: &[CacheRow]) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let headers = vec!["Endpoint", "Source", "FQDN", "TTL", "ExpirationTime", "IPs"];
    let body = rows
        .iter()
        .map(|r| {
            let ips: Vec<String> = r.ips.iter().map(|i| i.to_string()).collect();
            vec![
                r.endpoint.clone(),
                r.source.clone(),
                r.fqdn.clone(),
                r.ttl.to_string(),
                rfc3339(r.expiration_time),
                ips.join(","),
            ]
        })
        .collect();
    (headers, body)
}

/// Aligned columns, three spaces apart.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
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
            let pad = if i + 1 == n {
                0
            } else {
                widths[i].saturating_sub(c.chars().count()) + 3
            };
            s.push_str(&c);
            s.push_str(&" ".repeat(pad));
        }
        format!("{}\n", s.trim_end())
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    out
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // civil from days (Howard Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_cilium() {
        let rows = vec![CacheRow {
            endpoint: "default/crawler".into(),
            source: "lookup".into(),
            fqdn: "api.example.com.".into(),
            ttl: 300,
            expiration_time: 1_700_000_000,
            ips: vec![
                "192.0.2.10".parse().expect("ip"),
                "192.0.2.11".parse().expect("ip"),
            ],
        }];
        let (h, b) = render(&rows);
        assert_eq!(
            h,
            ["Endpoint", "Source", "FQDN", "TTL", "ExpirationTime", "IPs"]
        );
        assert_eq!(
            b[0],
            [
                "default/crawler",
                "lookup",
                "api.example.com.",
                "300",
                "2023-11-14T22:13:20Z",
                "192.0.2.10,192.0.2.11"
            ]
        );
    }
}
