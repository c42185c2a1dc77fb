//! `palisade servicemap`: the service map of recorded flows, written to a
//! file or served over HTTP (the agent serves the same page live).

use super::observe::read_flows;
use anyhow::{Context, Result, anyhow};
use palisade_flow::flow::FlowsResponse;
use palisade_flow::metrics::Metrics;
use palisade_flow::servicemap::render_page;
use palisade_flow::web::{FlowSource, router};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  palisade observe --input-file flows.json -o jsonpb > f.json && palisade servicemap --input-file f.json --output map.html\n  palisade servicemap --input-file flows.json --listen 127.0.0.1:9090   # then open http://127.0.0.1:9090/"
)]
pub struct ServiceMapArgs {
    /// Flows (Hubble JSON lines or array); `-` for stdin.
    #[arg(long)]
    pub input_file: String,
    /// Write the page to this file.
    #[arg(long, conflicts_with = "listen")]
    pub output: Option<String>,
    /// Serve the page (`/`), the flows (`/api/flows`) and metrics (`/metrics`) on this address.
    #[arg(long)]
    pub listen: Option<String>,
}

struct FileSource {
    flows: Vec<FlowsResponse>,
    metrics: Metrics,
}

impl FlowSource for FileSource {
    fn flows(&self) -> Vec<FlowsResponse> {
        self.flows.clone()
    }
    fn metrics(&self) -> String {
        self.metrics.encode()
    }
}

pub fn run(a: ServiceMapArgs) -> Result<ExitCode> {
    let flows = read_flows(&a.input_file)?;
    if let Some(out) = &a.output {
        std::fs::write(out, render_page("Palisade service map", &flows))
            .with_context(|| format!("{out}: cannot write"))?;
        println!("wrote {out} ({} flows)", flows.len());
        return Ok(ExitCode::SUCCESS);
    }
    let Some(addr) = a.listen else {
        return Err(anyhow!("give --output FILE or --listen ADDRESS"));
    };
    let src: Arc<dyn FlowSource> = Arc::new(FileSource {
        flows,
        metrics: Metrics::new(),
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        eprintln!(
            "serving the service map on http://{}/",
            listener.local_addr()?
        );
        axum::serve(listener, router(src))
            .await
            .context("server failed")
    })?;
    Ok(ExitCode::SUCCESS)
}
