//! End-to-end enforcement with real namespaces, veths and sockets.
//! Run as root (BPF + network namespaces).

use std::time::Duration;

use palisade_datapath::ipcache::Ipv4Prefix;
use palisade_datapath::netns::Pod;
use palisade_datapath::testenv::{EchoServer, TestEnv, echo_roundtrip, tcp_connect, wait_until};
use palisade_datapath::{
    CtState, Datapath, DatapathEvent, Direction, EndpointInfo, EventReader, MatchType, PolicyKey,
    PolicyValue, Verdict, port_range_blocks,
};

const TCP: u8 = 6;
const UDP: u8 = 17;
const SHORT: Duration = Duration::from_millis(400);
const LONG: Duration = Duration::from_secs(5);

struct Setup {
    // field order: the datapath goes before the namespaces and pins
    dp: Datapath,
    events: EventReader,
    pods: Vec<Pod>,
    env: TestEnv,
}

fn ep_id(i: usize) -> u32 {
    10 + i as u32
}

fn identity(i: usize) -> u32 {
    1000 + i as u32
}

/// `n` pods; pod i is endpoint 10+i with identity 1000+i, enforcement as given.
fn setup(enforce: &[(bool, bool)]) -> Setup {
    let mut env = TestEnv::new().expect("test env");
    let mut dp = Datapath::load_or_adopt(env.config()).expect("load datapath");
    let events = dp.event_reader().expect("event reader");
    let mut pods = Vec::new();
    for (i, (ing, eg)) in enforce.iter().enumerate() {
        let pod = env.add_pod().expect("pod");
        dp.set_endpoint(
            pod.host_ifindex,
            EndpointInfo {
                ep_id: ep_id(i),
                identity: identity(i),
                enforce_ingress: *ing,
                enforce_egress: *eg,
            },
        )
        .expect("endpoint");
        dp.ipcache_upsert(Ipv4Prefix::host(pod.ip), identity(i))
            .expect("ipcache");
        pods.push(pod);
    }
    let ifindexes: Vec<u32> = pods.iter().map(|p| p.host_ifindex).collect();
    env.in_node(|| ifindexes.iter().try_for_each(|i| dp.attach(*i)))
        .expect("node thread")
        .expect("attach");
    Setup {
        dp,
        events,
        pods,
        env,
    }
}

fn connects(s: &Setup, from: usize, to: usize, port: u16) -> bool {
    tcp_connect(&s.pods[from].netns, s.pods[to].ip, port, SHORT)
        .expect("netns")
        .is_ok()
}

fn wait_event(s: &mut Setup, pred: impl FnMut(&DatapathEvent) -> bool) -> DatapathEvent {
    s.events
        .wait_for(LONG, pred)
        .expect("event ring")
        .expect("expected event did not arrive")
}

#[test]
fn default_deny_drops_with_reason_133_and_an_event() {
    let mut s = setup(&[(false, false), (true, false)]);
    let _srv = EchoServer::start(&s.pods[1].netns, 8080).expect("server");
    assert!(!connects(&s, 0, 1, 8080), "default deny must drop");
    let ev = wait_event(&mut s, |e| {
        e.ep_id == ep_id(1) && e.verdict == Verdict::Dropped
    });
    assert_eq!(ev.drop_reason, 133);
    assert_eq!(ev.direction, Direction::Ingress);
    assert_eq!(
        (ev.saddr, ev.daddr, ev.dport, ev.proto),
        (s.pods[0].ip, s.pods[1].ip, 8080, TCP)
    );
    assert_eq!(ev.local_identity, identity(1));
    assert_eq!(ev.remote_identity, identity(0));
    assert_eq!(ev.match_type, MatchType::None);
    assert_eq!(ev.tcp_flags & 0x02, 0x02, "a SYN was dropped");
    let c = s.dp.counters(ep_id(1)).expect("counters");
    assert!(c.dropped(Direction::Ingress, 133) >= 1, "{c:?}");
    let _ = &s.env;
}

#[test]
fn exact_identity_l3_only_allows_with_cookie_and_counters() {
    let mut s = setup(&[(false, false), (true, false), (false, false)]);
    let _srv = EchoServer::start(&s.pods[1].netns, 8080).expect("server");
    let key = PolicyKey::l3_only(ep_id(1), identity(0), Direction::Ingress);
    s.dp.policy_apply(ep_id(1), &[(key, PolicyValue::allow(11))], &[])
        .expect("apply");

    let mut stream = tcp_connect(&s.pods[0].netns, s.pods[1].ip, 8080, LONG)
        .expect("netns")
        .expect("allowed by L3-only entry");
    assert!(echo_roundtrip(&mut stream, b"hello", LONG));
    let ev = wait_event(&mut s, |e| e.ep_id == ep_id(1));
    assert_eq!(ev.verdict, Verdict::Forwarded);
    assert_eq!(ev.cookie, 11);
    assert_eq!(ev.match_type, MatchType::L3Only);
    assert_eq!(ev.ct_state, CtState::New);

    // another identity is still denied
    assert!(!connects(&s, 2, 1, 8080));
    let ev = wait_event(&mut s, |e| e.verdict == Verdict::Dropped);
    assert_eq!((ev.drop_reason, ev.remote_identity), (133, identity(2)));

    let c = s.dp.counters(ep_id(1)).expect("counters");
    assert!(
        c.packets(Direction::Ingress, Verdict::Forwarded) >= 3,
        "{c:?}"
    );
    assert!(c.entries.iter().any(|e| e.bytes > 0));
}

#[test]
fn l4_only_wildcard_identity_allows_one_port() {
    let mut s = setup(&[(false, false), (true, false)]);
    let _a = EchoServer::start(&s.pods[1].netns, 8080).expect("server");
    let _b = EchoServer::start(&s.pods[1].netns, 8081).expect("server");
    let key = PolicyKey::port(ep_id(1), 0, Direction::Ingress, TCP, 8080);
    s.dp.policy_apply(ep_id(1), &[(key, PolicyValue::allow(21))], &[])
        .expect("apply");
    assert!(connects(&s, 0, 1, 8080));
    let ev = wait_event(&mut s, |e| {
        e.ep_id == ep_id(1) && e.verdict == Verdict::Forwarded && e.dport == 8080
    });
    assert_eq!((ev.match_type, ev.cookie), (MatchType::L4Only, 21));
    assert!(!connects(&s, 0, 1, 8081));
    let ev = wait_event(&mut s, |e| e.verdict == Verdict::Dropped);
    assert_eq!((ev.dport, ev.drop_reason), (8081, 133));
}

#[test]
fn deny_beats_allow_with_reason_181() {
    let mut s = setup(&[(false, false), (true, false)]);
    let _a = EchoServer::start(&s.pods[1].netns, 8080).expect("server");
    let _b = EchoServer::start(&s.pods[1].netns, 8081).expect("server");
    let allow = PolicyKey::l3_only(ep_id(1), identity(0), Direction::Ingress);
    let deny = PolicyKey::port(ep_id(1), 0, Direction::Ingress, TCP, 8080);
    s.dp.policy_apply(
        ep_id(1),
        &[
            (allow, PolicyValue::allow(1)),
            (deny, PolicyValue::deny(99)),
        ],
        &[],
    )
    .expect("apply");
    assert!(!connects(&s, 0, 1, 8080), "deny must win");
    let ev = wait_event(&mut s, |e| e.verdict == Verdict::Dropped);
    assert_eq!(
        (ev.drop_reason, ev.cookie, ev.match_type),
        (181, 99, MatchType::L4Only)
    );
    assert!(connects(&s, 0, 1, 8081));
}

#[test]
fn port_range_entries_allow_the_range_only() {
    let mut s = setup(&[(false, false), (true, false)]);
    let servers: Vec<EchoServer> = [7999, 8000, 8100, 8101]
        .iter()
        .map(|p| EchoServer::start(&s.pods[1].netns, *p).expect("server"))
        .collect();
    let adds: Vec<(PolicyKey, PolicyValue)> = port_range_blocks(8000, 8100)
        .into_iter()
        .map(|b| {
            (
                PolicyKey::port_block(ep_id(1), identity(0), Direction::Ingress, TCP, b),
                PolicyValue::allow(5),
            )
        })
        .collect();
    s.dp.policy_apply(ep_id(1), &adds, &[]).expect("apply");
    let live = s.dp.policy_entries(ep_id(1)).expect("read back");
    assert_eq!(live.len(), adds.len());
    assert!(connects(&s, 0, 1, 8000));
    assert!(connects(&s, 0, 1, 8100));
    assert!(!connects(&s, 0, 1, 7999));
    assert!(!connects(&s, 0, 1, 8101));
    let ev = wait_event(&mut s, |e| {
        e.ep_id == ep_id(1) && e.verdict == Verdict::Forwarded
    });
    assert_eq!((ev.match_type, ev.cookie), (MatchType::L3L4, 5));
    drop(servers);
}

#[test]
fn replies_pass_while_the_reverse_direction_is_denied() {
    // both pods enforce both directions
    let mut s = setup(&[(true, true), (true, true)]);
    let _srv = EchoServer::start(&s.pods[1].netns, 8080).expect("server");
    let _srv0 = EchoServer::start(&s.pods[0].netns, 8080).expect("server");
    s.dp.policy_apply(
        ep_id(0),
        &[(
            PolicyKey::port(ep_id(0), identity(1), Direction::Egress, TCP, 8080),
            PolicyValue::allow(1),
        )],
        &[],
    )
    .expect("apply");
    s.dp.policy_apply(
        ep_id(1),
        &[(
            PolicyKey::port(ep_id(1), identity(0), Direction::Ingress, TCP, 8080),
            PolicyValue::allow(2),
        )],
        &[],
    )
    .expect("apply");
    let mut stream = tcp_connect(&s.pods[0].netns, s.pods[1].ip, 8080, LONG)
        .expect("netns")
        .expect("0 -> 1 allowed");
    assert!(
        echo_roundtrip(&mut stream, b"ping-pong", LONG),
        "replies must pass"
    );
    // the other way round is denied at pod 1's egress
    assert!(!connects(&s, 1, 0, 8080));
    let ev = wait_event(&mut s, |e| e.verdict == Verdict::Dropped);
    assert_eq!(
        (ev.ep_id, ev.direction, ev.drop_reason),
        (ep_id(1), Direction::Egress, 133)
    );
    // a clean close: no drop event from the teardown
    drop(stream);
    let ct_ok = wait_until(LONG, || {
        s.dp.conntrack_entries()
            .expect("ct")
            .iter()
            .any(|(k, e)| k.ep_id == ep_id(0) && k.proto == TCP && k.dport == 8080 && e.closing())
    });
    assert!(
        ct_ok,
        "the closed connection stays tracked in a closing state"
    );
    let teardown_drops: Vec<_> = s
        .events
        .drain()
        .into_iter()
        .filter(|e| e.verdict == Verdict::Dropped && e.dport == 8080 && e.sport != 8080)
        .collect();
    assert!(
        teardown_drops.iter().all(|e| e.saddr == s.pods[1].ip),
        "{teardown_drops:?}"
    );
}

#[test]
fn revoking_policy_cuts_an_open_connection_and_reallowing_restores_it() {
    let mut s = setup(&[(false, false), (true, false)]);
    let _srv = EchoServer::start(&s.pods[1].netns, 8080).expect("server");
    let key = PolicyKey::port(ep_id(1), identity(0), Direction::Ingress, TCP, 8080);
    s.dp.policy_apply(ep_id(1), &[(key, PolicyValue::allow(7))], &[])
        .expect("apply");
    let mut stream = tcp_connect(&s.pods[0].netns, s.pods[1].ip, 8080, LONG)
        .expect("netns")
        .expect("allowed");
    // allowed at open: not dropped while the policy is unchanged
    for _ in 0..5 {
        assert!(echo_roundtrip(&mut stream, b"steady", LONG));
    }
    s.dp.policy_apply(ep_id(1), &[], &[key]).expect("revoke");
    assert!(
        !echo_roundtrip(&mut stream, b"cut", SHORT),
        "revocation must cut the flow"
    );
    let ev = wait_event(&mut s, |e| e.verdict == Verdict::Dropped);
    assert_eq!((ev.drop_reason, ev.ct_state), (133, CtState::Established));
    s.dp.policy_apply(ep_id(1), &[(key, PolicyValue::allow(7))], &[])
        .expect("re-allow");
    // the "cut" bytes are retransmitted and echoed: read them, then a fresh round trip
    let mut buf = [0u8; 3];
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    std::io::Read::read_exact(&mut stream, &mut buf).expect("retransmission delivered");
    assert_eq!(&buf, b"cut");
    assert!(echo_roundtrip(&mut stream, b"restored", LONG));
}

#[test]
fn icmp_errors_related_to_a_tracked_flow_pass() {
    // pod 0 enforces ingress with no policy at all: only replies/related get in
    let s = setup(&[(true, true), (true, true)]);
    s_apply(
        &s,
        0,
        PolicyKey::port(ep_id(0), 0, Direction::Egress, UDP, 9999),
    );
    s_apply(
        &s,
        1,
        PolicyKey::port(ep_id(1), 0, Direction::Ingress, UDP, 9999),
    );
    let dst = s.pods[1].ip;
    let refused = palisade_datapath::netns::in_netns(&s.pods[0].netns, move || {
        let sock = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        sock.connect((dst, 9999)).expect("connect");
        sock.set_read_timeout(Some(LONG)).expect("timeout");
        sock.send(b"x").expect("send");
        let mut buf = [0u8; 16];
        matches!(sock.recv(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
    })
    .expect("netns");
    assert!(refused, "the ICMP port unreachable must reach the sender");
}

fn s_apply(s: &Setup, _i: usize, key: PolicyKey) {
    // helper taking &Setup: write through a second handle on the same pins
    let mut dp = Datapath::load_or_adopt(s.env.config()).expect("adopt");
    dp.policy_apply(key.ep_id, &[(key, PolicyValue::allow(3))], &[])
        .expect("apply");
}

#[test]
fn udp_without_policy_is_dropped_and_icmp_unrelated_is_not_let_in() {
    // same as above but pod 1 does not allow the UDP: no error comes back
    let s = setup(&[(true, true), (true, true)]);
    s_apply(
        &s,
        0,
        PolicyKey::port(ep_id(0), 0, Direction::Egress, UDP, 9999),
    );
    let dst = s.pods[1].ip;
    let refused = palisade_datapath::netns::in_netns(&s.pods[0].netns, move || {
        let sock = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        sock.connect((dst, 9999)).expect("connect");
        sock.set_read_timeout(Some(SHORT)).expect("timeout");
        sock.send(b"x").expect("send");
        let mut buf = [0u8; 16];
        matches!(sock.recv(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
    })
    .expect("netns");
    assert!(!refused);
    let c = s.dp.counters(ep_id(1)).expect("counters");
    assert!(c.dropped(Direction::Ingress, 133) >= 1);
}
