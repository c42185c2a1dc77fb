//! Pinning, adoption across restarts, capacity and conntrack GC.

use std::time::Duration;

use aya::programs::{SchedClassifier, TcAttachType};
use palisade_datapath::conntrack::monotonic_now_ns;
use palisade_datapath::ipcache::Ipv4Prefix;
use palisade_datapath::testenv::{EchoServer, TestEnv, echo_roundtrip, tcp_connect};
use palisade_datapath::{
    Datapath, DatapathConfig, DatapathError, Direction, EndpointInfo, PolicyKey, PolicyValue,
};

const TCP: u8 = 6;
const UDP: u8 = 17;
const SHORT: Duration = Duration::from_millis(400);
const LONG: Duration = Duration::from_secs(5);

fn ep(ep_id: u32, identity: u32) -> EndpointInfo {
    EndpointInfo {
        ep_id,
        identity,
        enforce_ingress: true,
        enforce_egress: false,
    }
}

fn tcx_count(env: &TestEnv, ifname: &str) -> (usize, usize) {
    let name = ifname.to_string();
    env.in_node(move || {
        let i = SchedClassifier::query_tcx(&name, TcAttachType::Ingress)
            .expect("query")
            .1
            .len();
        let e = SchedClassifier::query_tcx(&name, TcAttachType::Egress)
            .expect("query")
            .1
            .len();
        (i, e)
    })
    .expect("node")
}

#[test]
fn restart_adopts_pinned_state_without_a_gap_or_double_attach() {
    let mut env = TestEnv::new().expect("env");
    let client = env.add_pod().expect("pod");
    let server = env.add_pod().expect("pod");
    let _srv = EchoServer::start(&server.netns, 8080).expect("server");
    let _srv2 = EchoServer::start(&server.netns, 8081).expect("server");
    let allow = PolicyKey::port(2, 100, Direction::Ingress, TCP, 8080);
    let mut stream;
    {
        let mut dp = Datapath::load_or_adopt(env.config()).expect("load");
        dp.set_endpoint(
            client.host_ifindex,
            EndpointInfo {
                enforce_ingress: false,
                ..ep(1, 100)
            },
        )
        .expect("ep");
        dp.set_endpoint(server.host_ifindex, ep(2, 200))
            .expect("ep");
        dp.ipcache_upsert(Ipv4Prefix::host(client.ip), 100)
            .expect("ipcache");
        dp.ipcache_upsert(Ipv4Prefix::host(server.ip), 200)
            .expect("ipcache");
        dp.policy_apply(2, &[(allow, PolicyValue::allow(1))], &[])
            .expect("policy");
        let (a, b) = (client.host_ifindex, server.host_ifindex);
        env.in_node(|| dp.attach(a).and_then(|_| dp.attach(b)))
            .expect("node")
            .expect("attach");
        stream = tcp_connect(&client.netns, server.ip, 8080, LONG)
            .expect("ns")
            .expect("allowed");
        assert!(echo_roundtrip(&mut stream, b"before", LONG));
        // the agent "exits": every fd it held is closed
    }
    // enforcement continues with no process holding anything
    assert!(
        echo_roundtrip(&mut stream, b"between", LONG),
        "open flow survives"
    );
    assert!(
        tcp_connect(&client.netns, server.ip, 8081, SHORT)
            .expect("ns")
            .is_err(),
        "still enforced"
    );

    // a new agent adopts the pins: same policy, no double attachment
    let mut dp = Datapath::load_or_adopt(env.config()).expect("adopt");
    assert_eq!(
        dp.policy_entries(2).expect("entries"),
        vec![(allow, PolicyValue::allow(1))]
    );
    assert_eq!(dp.policy_len(2), 1);
    let b = server.host_ifindex;
    env.in_node(|| dp.attach(b))
        .expect("node")
        .expect("re-attach");
    assert_eq!(tcx_count(&env, &server.host_ifname), (1, 1));
    assert!(
        echo_roundtrip(&mut stream, b"after", LONG),
        "no gap after adoption"
    );
    // the adopted maps are the live ones: a delta through the new agent takes effect
    let allow_8081 = PolicyKey::port(2, 100, Direction::Ingress, TCP, 8081);
    dp.policy_apply(2, &[(allow_8081, PolicyValue::allow(2))], &[])
        .expect("delta");
    assert!(
        tcp_connect(&client.netns, server.ip, 8081, LONG)
            .expect("ns")
            .is_ok()
    );
    // detach removes enforcement from the interface
    env.in_node(|| dp.detach(b)).expect("node").expect("detach");
    assert_eq!(tcx_count(&env, &server.host_ifname), (0, 0));
    assert!(!dp.is_attached(b));
}

#[test]
fn killed_agent_process_leaves_enforcement_in_place() {
    // A child process (this test binary, in agent mode) loads, attaches and exits.
    if let Ok(root) = std::env::var("PALISADE_TEST_AGENT_PIN_ROOT") {
        let node = std::env::var("PALISADE_TEST_AGENT_NODE").expect("node");
        let ifindex: u32 = std::env::var("PALISADE_TEST_AGENT_IFINDEX")
            .expect("if")
            .parse()
            .expect("n");
        let mut dp = Datapath::load_or_adopt(DatapathConfig {
            pin_root: root.into(),
            ..DatapathConfig::default()
        })
        .expect("child load");
        dp.set_endpoint(ifindex, ep(2, 200)).expect("ep");
        palisade_datapath::netns::in_netns(&node, || dp.attach(ifindex))
            .expect("ns")
            .expect("attach");
        std::process::exit(0);
    }
}

#[test]
fn agent_process_exit_keeps_enforcement() {
    let mut env = TestEnv::new().expect("env");
    let client = env.add_pod().expect("pod");
    let server = env.add_pod().expect("pod");
    let _srv = EchoServer::start(&server.netns, 8080).expect("server");
    let exe = std::env::current_exe().expect("exe");
    let status = std::process::Command::new(exe)
        .args([
            "--exact",
            "killed_agent_process_leaves_enforcement_in_place",
            "--test-threads",
            "1",
        ])
        .env("PALISADE_TEST_AGENT_PIN_ROOT", &env.pin_root)
        .env("PALISADE_TEST_AGENT_NODE", &env.node)
        .env(
            "PALISADE_TEST_AGENT_IFINDEX",
            server.host_ifindex.to_string(),
        )
        .status()
        .expect("spawn agent");
    assert!(status.success());
    // the agent process is gone; default deny still applies on the server
    assert!(
        tcp_connect(&client.netns, server.ip, 8080, SHORT)
            .expect("ns")
            .is_err()
    );
    assert_eq!(tcx_count(&env, &server.host_ifname), (1, 1));
}

#[test]
fn per_endpoint_capacity_is_enforced_without_partial_writes() {
    let env = TestEnv::new().expect("env");
    let mut dp = Datapath::load_or_adopt(DatapathConfig {
        policy_capacity_per_endpoint: 8,
        ..env.config()
    })
    .expect("load");
    let keys: Vec<(PolicyKey, PolicyValue)> = (0..9u16)
        .map(|i| {
            (
                PolicyKey::port(5, 0, Direction::Egress, TCP, 1000 + i),
                PolicyValue::allow(1),
            )
        })
        .collect();
    match dp.policy_apply(5, &keys, &[]) {
        Err(DatapathError::PolicyCapacity {
            ep_id: 5,
            capacity: 8,
            current: 0,
            requested: 9,
        }) => {}
        other => panic!("expected a capacity error, got {other:?}"),
    }
    assert!(
        dp.policy_entries(5).expect("entries").is_empty(),
        "nothing written"
    );
    dp.policy_apply(5, &keys[..8], &[]).expect("fits");
    // another endpoint has its own budget
    dp.policy_apply(
        6,
        &[(
            PolicyKey::l3_only(6, 9, Direction::Ingress),
            PolicyValue::allow(1),
        )],
        &[],
    )
    .expect("other endpoint");
    // replacing one entry in the same delta fits
    dp.policy_apply(5, &keys[8..], &[keys[0].0])
        .expect("swap fits");
    assert!(matches!(
        dp.policy_apply(
            5,
            &[(
                PolicyKey::port(5, 0, Direction::Egress, UDP, 1),
                PolicyValue::allow(1)
            )],
            &[]
        ),
        Err(DatapathError::PolicyCapacity { .. })
    ));
    assert_eq!(dp.policy_entries(5).expect("entries").len(), 8);
    // keys for another endpoint are rejected
    assert!(
        dp.policy_apply(
            5,
            &[(
                PolicyKey::l3_only(6, 1, Direction::Egress),
                PolicyValue::allow(1)
            )],
            &[]
        )
        .is_err()
    );
}

#[test]
fn conntrack_gc_removes_expired_entries_only() {
    let mut env = TestEnv::new().expect("env");
    let client = env.add_pod().expect("pod");
    let server = env.add_pod().expect("pod");
    let _srv = EchoServer::start(&server.netns, 8080).expect("server");
    let mut dp = Datapath::load_or_adopt(env.config()).expect("load");
    dp.set_endpoint(
        client.host_ifindex,
        EndpointInfo {
            enforce_ingress: false,
            ..ep(1, 100)
        },
    )
    .expect("ep");
    dp.set_endpoint(
        server.host_ifindex,
        EndpointInfo {
            enforce_ingress: false,
            ..ep(2, 200)
        },
    )
    .expect("ep");
    let (a, b) = (client.host_ifindex, server.host_ifindex);
    env.in_node(|| dp.attach(a).and_then(|_| dp.attach(b)))
        .expect("node")
        .expect("attach");

    let mut stream = tcp_connect(&client.netns, server.ip, 8080, LONG)
        .expect("ns")
        .expect("open");
    assert!(echo_roundtrip(&mut stream, b"x", LONG));
    let dst = server.ip;
    palisade_datapath::netns::in_netns(&client.netns, move || {
        let sock = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        sock.send_to(b"u", (dst, 9000)).expect("send");
    })
    .expect("ns");
    let has = |dp: &Datapath, proto: u8| {
        dp.conntrack_entries()
            .expect("ct")
            .iter()
            .filter(|(k, _)| k.proto == proto)
            .count()
    };
    assert!(palisade_datapath::testenv::wait_until(LONG, || has(
        &dp, UDP
    ) >= 1));
    let now = monotonic_now_ns();
    assert_eq!(
        dp.gc_conntrack(now).expect("gc").deleted,
        0,
        "nothing expired yet"
    );
    // 61 s later: UDP (60 s) expires, the established TCP flow (6 h) does not
    let stats = dp.gc_conntrack(now + 61_000_000_000).expect("gc");
    assert!(stats.deleted >= 1);
    assert_eq!(has(&dp, UDP), 0);
    assert_eq!(has(&dp, TCP), 2, "one TCP entry per endpoint survives");
    assert!(echo_roundtrip(&mut stream, b"still", LONG));
    let stats = dp.gc_conntrack(now + 7 * 3600 * 1_000_000_000).expect("gc");
    assert_eq!(stats.deleted, 2);
    assert!(dp.conntrack_entries().expect("ct").is_empty());
}
