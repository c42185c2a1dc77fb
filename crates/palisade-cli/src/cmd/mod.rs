//! The `palisade policy ...` commands.

pub mod agent;
mod apply;
pub mod bpf;
pub mod endpoint;
mod explain;
pub mod fqdn;
mod impact;
pub mod lab;
pub mod live;
pub mod observe;
pub mod pod;
pub mod proxy;
pub mod servicemap;
pub mod status;
mod validate;

use crate::FeatureArgs;
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)]
pub enum PolicyCommand {
    /// Apply manifests to the running agent (validated as one change; errors as file:line:col).
    #[command(
        after_help = "Exit status: 0 applied, 1 rejected (nothing applied; the last good policy stays enforced).\n\n\
Examples:\n  palisade policy apply -f policy.yaml\n  palisade policy apply -f policies/ --socket /tmp/pal.sock"
    )]
    Apply {
        /// Files or directories with manifests; `-` for stdin.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        socket: live::SocketArg,
    },
    /// Delete from the running agent the objects these manifests name.
    #[command(after_help = "Example:\n  palisade policy delete -f policy.yaml")]
    Delete {
        /// Files or directories with manifests; `-` for stdin.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        socket: live::SocketArg,
    },
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
    /// Replay recorded flows against candidate policies: what would be newly dropped or allowed.
    #[command(
        after_help = "Flows are Hubble JSON (jsonpb lines from `palisade observe -o jsonpb` or `hubble observe -o jsonpb`).\nPolicies with the annotation palisade.io/audit: \"true\" (or in a namespace labelled palisade.io/audit=true) are in audit mode.\nExit status: 0 nothing newly dropped, 1 something would be newly dropped, 2 invalid input.\n\nExample:\n  palisade policy impact -f cluster.yaml -f new-policies/ --flows flows.json"
    )]
    Impact {
        /// Cluster state and the candidate policy set.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Recorded flows (JSON lines or array); `-` for stdin.
        #[arg(long)]
        flows: String,
        #[arg(short, long, value_enum, default_value_t = explain::OutFormat::Text)]
        output: explain::OutFormat,
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
        PolicyCommand::Apply { files, socket } => apply::run(&files, &socket, false),
        PolicyCommand::Delete { files, socket } => apply::run(&files, &socket, true),
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
        PolicyCommand::Impact {
            files,
            flows,
            output,
            features,
        } => impact::impact(&files, &flows, output, &features.options()),
        PolicyCommand::Map {
            files,
            pod,
            output,
            features,
        } => explain::map(&files, &pod, output, &features.options()),
    }
}

/// `palisade observe` arguments. The filter flags are documented and
/// checked by clap, then read again from the raw arguments in order so that
/// `--not` applies to the flag that follows it.
#[derive(clap::Args)]
pub struct ObserveArgs {
    #[command(flatten)]
    pub socket: live::SocketArg,
    /// Read flows from a JSON file (Hubble jsonpb lines, bare Flow lines, or a JSON array); `-` for stdin.
    #[arg(long)]
    pub input_file: Option<String>,
    /// Only the last N matching flows.
    #[arg(long)]
    pub last: Option<usize>,
    /// Flows at or after TIME (RFC 3339, or a duration ago: 30s, 5m, 1h).
    #[arg(long)]
    pub since: Option<String>,
    /// Flows at or before TIME.
    #[arg(long)]
    pub until: Option<String>,
    /// Keep printing new flows as they come (live agent only).
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Output: compact, json, jsonpb or table.
    #[arg(short, long, default_value = "compact")]
    pub output: String,
    /// Negate the filter flag that follows.
    #[arg(long, action = clap::ArgAction::Count)]
    pub not: u8,
    /// Either side's namespace.
    #[arg(short = 'n', long = "namespace", value_name = "VALUE")]
    pub namespace: Vec<String>,
    /// Either side's label selector.
    #[arg(short = 'l', long = "label", value_name = "VALUE")]
    pub label: Vec<String>,
    /// Source IP or CIDR.
    #[arg(long = "from-ip", value_name = "VALUE")]
    pub from_ip: Vec<String>,
    /// Destination IP or CIDR.
    #[arg(long = "to-ip", value_name = "VALUE")]
    pub to_ip: Vec<String>,
    /// Either side's IP or CIDR.
    #[arg(long = "ip", value_name = "VALUE")]
    pub ip: Vec<String>,
    /// Source pod: [NAMESPACE/]NAME-PREFIX.
    #[arg(long = "from-pod", value_name = "VALUE")]
    pub from_pod: Vec<String>,
    /// Destination pod: [NAMESPACE/]NAME-PREFIX.
    #[arg(long = "to-pod", value_name = "VALUE")]
    pub to_pod: Vec<String>,
    /// Either side's pod.
    #[arg(long = "pod", value_name = "VALUE")]
    pub pod: Vec<String>,
    /// Source namespace.
    #[arg(long = "from-namespace", value_name = "VALUE")]
    pub from_namespace: Vec<String>,
    /// Destination namespace.
    #[arg(long = "to-namespace", value_name = "VALUE")]
    pub to_namespace: Vec<String>,
    /// Source label selector (k8s:app=web, reserved:world).
    #[arg(long = "from-label", value_name = "VALUE")]
    pub from_label: Vec<String>,
    /// Destination label selector.
    #[arg(long = "to-label", value_name = "VALUE")]
    pub to_label: Vec<String>,
    /// Source numeric identity.
    #[arg(long = "from-identity", value_name = "VALUE")]
    pub from_identity: Vec<String>,
    /// Destination numeric identity.
    #[arg(long = "to-identity", value_name = "VALUE")]
    pub to_identity: Vec<String>,
    /// Either side's identity.
    #[arg(long = "identity", value_name = "VALUE")]
    pub identity: Vec<String>,
    /// Source DNS name pattern (*.example.com).
    #[arg(long = "from-fqdn", value_name = "VALUE")]
    pub from_fqdn: Vec<String>,
    /// Destination DNS name pattern.
    #[arg(long = "to-fqdn", value_name = "VALUE")]
    pub to_fqdn: Vec<String>,
    /// Either side's DNS name pattern.
    #[arg(long = "fqdn", value_name = "VALUE")]
    pub fqdn: Vec<String>,
    /// Source port.
    #[arg(long = "from-port", value_name = "VALUE")]
    pub from_port: Vec<String>,
    /// Destination port.
    #[arg(long = "to-port", value_name = "VALUE")]
    pub to_port: Vec<String>,
    /// Either side's port.
    #[arg(long = "port", value_name = "VALUE")]
    pub port: Vec<String>,
    /// FORWARDED, DROPPED, AUDIT, REDIRECTED, ERROR.
    #[arg(long = "verdict", value_name = "VALUE")]
    pub verdict: Vec<String>,
    /// drop, trace, policy-verdict or l7.
    #[arg(long = "type", value_name = "VALUE")]
    pub flow_type: Vec<String>,
    /// tcp, udp, icmp, sctp, http, dns or kafka.
    #[arg(long = "protocol", value_name = "VALUE")]
    pub protocol: Vec<String>,
    /// HTTP status code or prefix (5+).
    #[arg(long = "http-status", value_name = "VALUE")]
    pub http_status: Vec<String>,
    /// HTTP method.
    #[arg(long = "http-method", value_name = "VALUE")]
    pub http_method: Vec<String>,
    /// HTTP path regex.
    #[arg(long = "http-path", value_name = "VALUE")]
    pub http_path: Vec<String>,
    /// ingress or egress.
    #[arg(long = "traffic-direction", value_name = "VALUE")]
    pub traffic_direction: Vec<String>,
}

pub fn run_observe(a: ObserveArgs) -> anyhow::Result<ExitCode> {
    let raw: Vec<String> = std::env::args().skip(2).collect();
    match &a.input_file {
        Some(path) => observe::run_offline(path, &raw, a.last, a.since, a.until, &a.output),
        None => observe::run_live(
            &a.socket.client(),
            &raw,
            a.last,
            a.since,
            a.until,
            &a.output,
            a.follow,
        ),
    }
}
