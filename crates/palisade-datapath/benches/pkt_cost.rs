//! Per-packet cost of `from_container` via BPF_PROG_TEST_RUN at 10, 1,000
//! and 10,000 policy entries, with conntrack, against a baseline of the
//! program short-circuiting on a non-IP frame. Prints one table.
//! Run as root: `bench/datapath-pkt-cost.sh`.

use palisade_datapath::testrun::tcp_packet;
use palisade_datapath::{
    Datapath, DatapathConfig, Direction, EndpointInfo, PolicyKey, PolicyValue, Program,
};

const REPEAT: u32 = 1_000_000;
const LO_IFINDEX: u32 = 1;
const EP: u32 = 1;

fn median(mut v: Vec<u32>) -> u32 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn run(dp: &Datapath, pkt: &[u8]) -> (u32, u32) {
    let mut samples = Vec::new();
    let mut retval = 0;
    for _ in 0..5 {
        match dp.test_run(Program::FromContainer, pkt, LO_IFINDEX, REPEAT) {
            Ok(r) => {
                retval = r.retval;
                samples.push(r.duration_ns);
            }
            Err(e) => {
                eprintln!("BPF_PROG_TEST_RUN failed (run as root): {e}");
                std::process::exit(1);
            }
        }
    }
    (median(samples), retval)
}

fn main() {
    let root =
        std::path::PathBuf::from(format!("/sys/fs/bpf/palisade-bench-{}", std::process::id()));
    let cfg = DatapathConfig {
        pin_root: root.clone(),
        ..DatapathConfig::default()
    };
    let mut dp = match Datapath::load_or_adopt(cfg) {
        Ok(dp) => dp,
        Err(e) => {
            eprintln!("cannot load the datapath (run as root): {e}");
            std::process::exit(1);
        }
    };
    let ep = EndpointInfo {
        ep_id: EP,
        identity: 100,
        enforce_ingress: true,
        enforce_egress: true,
    };
    dp.set_endpoint(LO_IFINDEX, ep).expect("endpoint");
    let allowed = tcp_packet([100, 64, 0, 2], [100, 64, 0, 3], 40000, 8080, 0x10);
    let mut non_ip = allowed.clone();
    non_ip[12] = 0x08;
    non_ip[13] = 0x06; // ARP ethertype: returns right after the first load

    println!("{:<44} {:>10} {:>8}", "case", "ns/packet", "verdict");
    let (b, rv) = run(&dp, &non_ip);
    println!(
        "{:<44} {:>10} {:>8}",
        "baseline: program exits at ethertype (ARP)", b, rv
    );
    let mut installed = 0u32;
    for n in [10u32, 1_000, 10_000] {
        // n entries: one allow for the benchmark flow + filler identities/ports
        let mut adds = vec![(
            PolicyKey::port(EP, 2, Direction::Egress, 6, 8080),
            PolicyValue::allow(1),
        )];
        for i in installed..n.saturating_sub(1) {
            adds.push((
                PolicyKey::port(
                    EP,
                    1000 + i / 100,
                    Direction::Egress,
                    6,
                    1 + (i % 100) as u16,
                ),
                PolicyValue::allow(i),
            ));
        }
        installed = n.saturating_sub(1);
        dp.policy_apply(EP, &adds, &[]).expect("policy");
        let total = dp.policy_len(EP);
        // established flow: conntrack hit, verdict cached for the current policy
        // revision (no LPM lookup); a revision bump re-checks it once
        let (ns, rv) = run(&dp, &allowed);
        println!(
            "{:<44} {:>10} {:>8}",
            format!("established allow, {total} entries"),
            ns,
            rv
        );
        // default deny: conntrack miss + 2 lookups + event + counter
        let denied = tcp_packet([100, 64, 0, 2], [100, 64, 0, 3], 40000, 9999, 0x02);
        let (ns, rv) = run(&dp, &denied);
        println!(
            "{:<44} {:>10} {:>8}",
            format!("new flow denied (133), {total} entries"),
            ns,
            rv
        );
    }
    drop(dp);
    let _ = std::fs::remove_dir_all(&root);
}
