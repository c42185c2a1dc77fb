//! `palisade pod run|exec|delete|list`: the local pod runtime.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::ExitCode;

use anyhow::Context;
use palisade_agent::api::{PodInfo, PodRunSpec, PortSpec, Request};

use super::live::{self, Format, SocketArg};

#[derive(clap::Subcommand, Debug)]
pub enum PodCommand {
    /// Run a pod: a network namespace with a veth into the node namespace, an address from the pod CIDR, its labels, and the datapath attached.
    #[command(
        after_help = "Examples:\n  palisade pod run default/backend --labels app=myapp,role=backend --port http:80/TCP\n  palisade pod run prod/db --labels app=database --port mysql:3306"
    )]
    Run {
        /// NAMESPACE/NAME
        pod: String,
        /// Labels: k=v,k2=v2
        #[arg(long, default_value = "")]
        labels: String,
        /// A container port, [name:]PORT[/PROTO] (repeatable).
        #[arg(long = "port")]
        ports: Vec<String>,
        /// An explicit address (default: the next free one of the pod CIDR).
        #[arg(long)]
        ip: Option<std::net::Ipv4Addr>,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Run a command inside a pod's network namespace; exits with the command's status.
    #[command(
        after_help = "Examples:\n  palisade pod exec default/frontend -- nc -zv 10.200.0.3 80\n  palisade pod exec default/backend -- python3 -m http.server 80"
    )]
    Exec {
        /// NAMESPACE/NAME
        pod: String,
        /// The command and its arguments (after --).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Delete a pod (its namespace, veth, endpoint and address).
    #[command(after_help = "Example:\n  palisade pod delete default/backend")]
    Delete {
        /// NAMESPACE/NAME
        pod: String,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// List the pods.
    #[command(after_help = "Example:\n  palisade pod list")]
    List {
        #[command(flatten)]
        socket: SocketArg,
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

fn split_key(pod: &str) -> anyhow::Result<(String, String)> {
    match pod.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => anyhow::bail!("invalid pod {pod:?}: use NAMESPACE/NAME"),
    }
}

pub fn run(c: PodCommand) -> anyhow::Result<ExitCode> {
    match c {
        PodCommand::Run {
            pod,
            labels,
            ports,
            ip,
            socket,
        } => {
            let (namespace, name) = split_key(&pod)?;
            let labels = palisade_agent::pods::parse_labels(&labels).map_err(anyhow::Error::msg)?;
            let ports = ports
                .iter()
                .map(|p| PortSpec::parse(p))
                .collect::<Result<Vec<_>, _>>()
                .map_err(anyhow::Error::msg)?;
            let req = Request::PodRun(PodRunSpec {
                namespace,
                name,
                labels,
                ports,
                ip,
                service_account: None,
            });
            match socket.client().request::<PodInfo>(&req) {
                Ok(p) => {
                    println!(
                        "pod {} running: ip {}, endpoint {}, netns {}, status {}",
                        p.pod, p.ip, p.endpoint, p.netns, p.status
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Ok(live::report(&e)),
            }
        }
        PodCommand::Exec {
            pod,
            command,
            socket,
        } => {
            split_key(&pod)?;
            let netns: String = match socket.client().request(&Request::PodNetns { pod }) {
                Ok(n) => n,
                Err(e) => return Ok(live::report(&e)),
            };
            exec_in_netns(&netns, &command)
        }
        PodCommand::Delete { pod, socket } => {
            split_key(&pod)?;
            match socket
                .client()
                .request::<()>(&Request::PodDelete { pod: pod.clone() })
            {
                Ok(()) => {
                    println!("pod {pod} deleted");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Ok(live::report(&e)),
            }
        }
        PodCommand::List { socket, output } => {
            let pods: Vec<PodInfo> = match socket.client().request(&Request::PodList) {
                Ok(p) => p,
                Err(e) => return Ok(live::report(&e)),
            };
            if output == Format::Json {
                live::print_json(&pods)?;
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = pods
                .iter()
                .map(|p| {
                    vec![
                        p.pod.clone(),
                        p.ip.to_string(),
                        p.endpoint.to_string(),
                        p.labels
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(","),
                        p.netns.clone(),
                        p.status.clone(),
                    ]
                })
                .collect();
            live::print_table(
                &["POD", "IPv4", "ENDPOINT", "LABELS", "NETNS", "STATUS"],
                &rows,
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs `command` with its network namespace switched to `/var/run/netns/<netns>`
/// (setns in the child before exec, so bpffs and /sys stay as they are),
/// inheriting stdin/stdout/stderr; returns its exit status.
pub fn exec_in_netns(netns: &str, command: &[String]) -> anyhow::Result<ExitCode> {
    let path = std::path::Path::new("/var/run/netns").join(netns);
    let f = std::fs::File::open(&path)
        .with_context(|| format!("opening {} (are you root?)", path.display()))?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    let (prog, args) = command
        .split_first()
        .context("no command given (use: palisade pod exec NS/POD -- CMD ARGS...)")?;
    let mut cmd = std::process::Command::new(prog);
    cmd.args(args);
    // SAFETY: setns is async-signal-safe; `fd` stays open (owned by `f`)
    // until after spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let status = cmd
        .status()
        .with_context(|| format!("running {prog} in pod network namespace {netns}"))?;
    drop(f);
    let code = match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        _ => 1,
    };
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}
