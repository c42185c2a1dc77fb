//! The `palisade policy ...` commands.

mod explain;
mod validate;

use crate::FeatureArgs;
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)]
pub enum PolicyCommand {
    /// Check manifests strictly: every error of every file, with file:line:column and field.
    #[command(
        after_help = "Exit status: 0 all valid, 1 something invalid, 2 usage or I/O error.\n\n\
Examples:\n  palisade policy validate policies/\n  palisade policy validate -o json policy.yaml\n  cat policy.yaml | palisade policy validate -"
    )]
    Validate {
        /// Files or directories (searched recursively for .yaml, .yml, .json); `-` for stdin.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = validate::Format::Text)]
        output: validate::Format,
        #[command(flatten)]
        features: FeatureArgs,
    },
    /// Print policies as the engine understood them, with defaults made explicit.
    #[command(
        after_help = "Examples:\n  palisade policy get -f policy.yaml\n  palisade policy get -f policies/ -o json"
    )]
    Get {
        /// Files or directories with manifests; `-` for stdin.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        #[arg(short, long, value_enum, default_value_t = validate::GetFormat::Yaml)]
        output: validate::GetFormat,
        #[command(flatten)]
        features: FeatureArgs,
    },
    /// Run policy tests: expected verdicts for connections, PASS/FAIL each.
    #[command(
        after_help = "The tests file:\n  tests:\n    - name: frontend may GET /public on backend\n      from: default/frontend\n      to: default/backend\n      port: 80            # protocol: TCP (default), UDP, SCTP or ICMP (with icmpType)\n      http: {method: GET, path: /public, headers: {X-My-Header: \"true\"}}\n      expect: allowed     # or denied\n\nAlso: kafka: {apiKey, apiVersion, clientID, topic}, dns: {query}, dnsName (with an ip: peer).\nPeers: NAMESPACE/POD, ip:ADDRESS, node:NAME, entity:NAME.\nExit status: 0 all pass, 1 any fails, 2 invalid input.\n\nExample:\n  palisade policy test -f cluster.yaml -f policies/ tests.yaml"
    )]
    Test {
        /// Manifests: cluster state (Namespaces, Pods, Nodes, Services) and policies.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// The tests file.
        tests: PathBuf,
        #[arg(short, long, value_enum, default_value_t = explain::OutFormat::Text)]
        output: explain::OutFormat,
        #[command(flatten)]
        features: FeatureArgs,
    },
    /// Explain the verdict for one connection, with the rules that decided it.
    #[command(
        after_help = "Examples:\n  palisade policy trace -f lab/ --from default/frontend --to default/backend --port 80/TCP\n  palisade policy trace -f lab/ --from default/frontend --to default/backend --port 80/TCP --http-method GET --http-path /public\n  palisade policy trace -f lab/ --from default/app --to ip:140.82.112.3 --dns-name api.github.com --port 443/TCP\n\nExit status: 0 allowed, 1 denied, 2 invalid input."
    )]
    Trace {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// The side that opens the connection: NAMESPACE/POD, ip:ADDRESS, node:NAME or entity:NAME.
        #[arg(long)]
        from: String,
        /// The destination: NAMESPACE/POD, ip:ADDRESS, node:NAME or entity:NAME.
        #[arg(long)]
        to: String,
        /// Destination port and protocol (80/TCP, 53/UDP; for ICMP the type: 8/ICMP).
        #[arg(long)]
        port: String,
        #[arg(long)]
        http_method: Option<String>,
        #[arg(long)]
        http_path: Option<String>,
        /// A request header, 'Name: value' (repeatable).
        #[arg(long = "http-header")]
        http_headers: Vec<String>,
        /// Kafka API key name (produce, fetch, metadata, ...).
        #[arg(long)]
        kafka_api_key: Option<String>,
        #[arg(long)]
        kafka_topic: Option<String>,
        #[arg(long)]
        kafka_client_id: Option<String>,
        /// A DNS query name sent on the connection (for DNS rules).
        #[arg(long)]
        dns_query: Option<String>,
        /// The DNS name the ip: peer was resolved from (for toFQDNs).
        #[arg(long)]
        dns_name: Option<String>,
        #[arg(short, long, value_enum, default_value_t = explain::OutFormat::Text)]
        output: explain::OutFormat,
        #[command(flatten)]
        features: FeatureArgs,
    },
    /// Print the pod-by-pod connectivity matrix (Kubernetes e2e truth-table style).
    #[command(
        after_help = "Example:\n  palisade policy connectivity -f cluster.yaml -f policies/ --port 80/TCP --port 53/UDP"
    )]
    Connectivity {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Ports to check (repeatable); default 80/TCP.
        #[arg(long)]
        port: Vec<String>,
        #[command(flatten)]
        features: FeatureArgs,
    },
    /// Print one endpoint's resolved policy map, like `cilium bpf policy get`.
    #[command(
        after_help = "Example:\n  palisade policy map -f cluster.yaml -f policies/ default/backend"
    )]
    Map {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// NAMESPACE/POD
        pod: String,
        #[arg(short, long, value_enum, default_value_t = explain::OutFormat::Text)]
        output: explain::OutFormat,
        #[command(flatten)]
        features: FeatureArgs,
    },
}

pub fn run_policy(c: PolicyCommand) -> anyhow::Result<ExitCode> {
    match c {
        PolicyCommand::Validate {
            paths,
            output,
            features,
        } => validate::validate(&paths, output, &features.options()),
        PolicyCommand::Get {
            files,
            output,
            features,
        } => validate::get(&files, output, &features.options()),
        PolicyCommand::Test {
            files,
            tests,
            output,
            features,
        } => explain::test(&files, &tests, output, &features.options()),
        PolicyCommand::Trace {
            files,
            from,
            to,
            port,
            http_method,
            http_path,
            http_headers,
            kafka_api_key,
            kafka_topic,
            kafka_client_id,
            dns_query,
            dns_name,
            output,
            features,
        } => explain::run_trace(
            &files,
            explain::TraceArgs {
                from,
                to,
                port,
                http_method,
                http_path,
                http_headers,
                kafka_api_key,
                kafka_topic,
                kafka_client_id,
                dns_query,
                dns_name,
            },
            output,
            &features.options(),
        ),
        PolicyCommand::Connectivity {
            files,
            port,
            features,
        } => explain::connectivity(&files, &port, &features.options()),
        PolicyCommand::Map {
            files,
            pod,
            output,
            features,
        } => explain::map(&files, &pod, output, &features.options()),
    }
}
