//! The datapath's fast paths keep the slow paths' semantics: the
//! `endpoints_fast` copy follows endpoint updates and removals, counters are
//! the same below and above the `counters_fast` range, and an established
//! flow's cached verdict dies with a policy change.
//! Runs `from_container` with BPF_PROG_TEST_RUN on `lo` (needs root).

use palisade_datapath::testenv::TestEnv;
use palisade_datapath::testrun::tcp_packet;
use palisade_datapath::{
    DROP_POLICY, Datapath, Direction, EndpointInfo, IDENTITY_WORLD, PolicyKey, PolicyValue,
    Program, Verdict,
};

const LO_IFINDEX: u32 = 1;
const OK: u32 = 0;
const SHOT: u32 = 2;

fn ep(ep_id: u32, enforce_egress: bool) -> EndpointInfo {
    EndpointInfo {
        ep_id,
        identity: 100,
        enforce_ingress: true,
        enforce_egress,
    }
}

fn run(dp: &Datapath, pkt: &[u8], repeat: u32) -> u32 {
    dp.test_run(Program::FromContainer, pkt, LO_IFINDEX, repeat)
        .expect("BPF_PROG_TEST_RUN (run as root)")
        .retval
}

#[test]
fn fast_paths_follow_endpoint_policy_and_counter_changes() {
    let env = TestEnv::new().expect("test env");
    let mut dp = Datapath::load_or_adopt(env.config()).expect("load datapath");
    let pkt = tcp_packet([100, 64, 0, 2], [100, 64, 0, 3], 40000, 8080, 0x10);
    let bytes = pkt.len() as u64;
    let allow = |ep_id| {
        (
            PolicyKey::port(ep_id, IDENTITY_WORLD, Direction::Egress, 6, 8080),
            PolicyValue::allow(7),
        )
    };

    // above the counters_fast range: the hash counters
    dp.set_endpoint(LO_IFINDEX, ep(5000, true))
        .expect("endpoint");
    dp.policy_apply(5000, &[allow(5000)], &[]).expect("policy");
    assert_eq!(run(&dp, &pkt, 10), OK);
    let c = dp.counters(5000).expect("counters");
    assert_eq!(c.packets(Direction::Egress, Verdict::Forwarded), 10);
    assert_eq!(c.entries.len(), 1);
    assert_eq!(c.entries[0].bytes, 10 * bytes);

    // the endpoint changes: the fast copy follows (ep 5 has no policy)
    dp.set_endpoint(LO_IFINDEX, ep(5, true)).expect("endpoint");
    assert_eq!(run(&dp, &pkt, 4), SHOT);
    let c = dp.counters(5).expect("counters");
    assert_eq!(c.dropped(Direction::Egress, DROP_POLICY), 4);
    assert_eq!(c.entries.len(), 1);
    assert_eq!(c.entries[0].bytes, 4 * bytes);
    assert_eq!(
        dp.counters(5000)
            .expect("counters")
            .packets(Direction::Egress, Verdict::Forwarded),
        10
    );

    // egress not enforced: allowed
    dp.set_endpoint(LO_IFINDEX, ep(5, false)).expect("endpoint");
    assert_eq!(run(&dp, &pkt, 3), OK);
    assert_eq!(
        dp.counters(5)
            .expect("counters")
            .packets(Direction::Egress, Verdict::Forwarded),
        3
    );

    // enforced with an allow: established, then revoked, then re-allowed
    dp.set_endpoint(LO_IFINDEX, ep(5, true)).expect("endpoint");
    dp.policy_apply(5, &[allow(5)], &[]).expect("policy");
    assert_eq!(run(&dp, &pkt, 5), OK);
    dp.policy_apply(5, &[], &[allow(5).0]).expect("revoke");
    assert_eq!(
        run(&dp, &pkt, 2),
        SHOT,
        "revocation cuts the established flow"
    );
    dp.policy_apply(5, &[allow(5)], &[]).expect("re-allow");
    assert_eq!(run(&dp, &pkt, 2), OK);
    let c = dp.counters(5).expect("counters");
    assert_eq!(c.packets(Direction::Egress, Verdict::Forwarded), 3 + 5 + 2);
    assert_eq!(c.dropped(Direction::Egress, DROP_POLICY), 4 + 2);

    // removed: the interface has no endpoint (0, default deny)
    dp.remove_endpoint(LO_IFINDEX).expect("remove");
    assert_eq!(run(&dp, &pkt, 1), SHOT);
    assert_eq!(
        dp.counters(0)
            .expect("counters")
            .dropped(Direction::Egress, DROP_POLICY),
        1
    );
    assert!(dp.endpoints().expect("endpoints").is_empty());
}
