//! Lost events are never silent: when the ring buffer is full, every event
//! the datapath could not emit is counted in `events_lost`.

use palisade_datapath::testenv::TestEnv;
use palisade_datapath::testrun::tcp_packet;
use palisade_datapath::{
    DROP_POLICY, Datapath, Direction, EndpointInfo, EventReader, Program, Verdict,
    events_lost_pinned,
};

/// `lo`: exists in every namespace; BPF_PROG_TEST_RUN only needs the ifindex.
const LO_IFINDEX: u32 = 1;
const EP: u32 = 7;
/// More denied packets than the 16 MiB ring holds (64-byte records:
/// 262,143), in one `BPF_PROG_TEST_RUN` call.
const BURST: u32 = 300_000;

#[test]
fn a_full_ring_counts_every_lost_event_exactly() {
    let env = TestEnv::new().expect("test env");
    let mut dp = Datapath::load_or_adopt(env.config()).expect("load datapath");
    let mut reader = dp.event_reader().expect("event reader");
    dp.set_endpoint(
        LO_IFINDEX,
        EndpointInfo {
            ep_id: EP,
            identity: 100,
            enforce_ingress: true,
            enforce_egress: true,
        },
    )
    .expect("endpoint");
    assert_eq!(dp.events_lost().expect("events_lost"), 0);
    assert_eq!(reader.events_lost().expect("events_lost"), 0);
    assert!(
        u64::from(BURST) > reader.capacity(),
        "the burst overflows the ring"
    );

    // no policy: every run is a new flow denied with 133 and one event
    let denied = tcp_packet([100, 64, 0, 2], [100, 64, 0, 3], 40000, 9999, 0x02);
    let mut read = 0u64;
    for round in 1..=2u64 {
        let r = dp
            .test_run(Program::FromContainer, &denied, LO_IFINDEX, BURST)
            .expect("BPF_PROG_TEST_RUN (run as root)");
        assert_eq!(r.retval, 2, "TC_ACT_SHOT");

        // produced = the drops the counters saw (one event each)
        let produced = dp
            .counters(EP)
            .expect("counters")
            .dropped(Direction::Egress, DROP_POLICY);
        assert_eq!(produced, round * u64::from(BURST));

        assert_eq!(reader.unread(), reader.capacity(), "round {round}: full");
        let events = reader.drain();
        assert!(events.iter().all(|e| e.ep_id == EP
            && e.verdict == Verdict::Dropped
            && e.drop_reason == DROP_POLICY));
        // nothing was read during the burst: the ring filled up exactly
        assert_eq!(events.len() as u64, reader.capacity(), "round {round}");
        read += events.len() as u64;
        let lost = dp.events_lost().expect("events_lost");
        assert!(lost > 0, "round {round}: the ring never filled up");
        assert!(read > 0, "round {round}: nothing was read");
        assert_eq!(
            produced,
            read + lost,
            "round {round}: produced = read + lost"
        );

        // the same figure for readers with only the pinned maps
        assert_eq!(reader.events_lost().expect("events_lost"), lost);
        assert_eq!(events_lost_pinned(&env.pin_root).expect("pinned"), lost);
        let other = EventReader::open_pinned(&env.pin_root).expect("open pinned");
        assert_eq!(other.events_lost().expect("events_lost"), lost);
    }
}
