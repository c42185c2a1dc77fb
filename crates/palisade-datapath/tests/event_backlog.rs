//! The reader's backlog extends the kernel ring without a new place to lose
//! events: it takes records only while it has room, so every event is
//! still either handed out or counted in `events_lost`.

use std::time::Duration;

use palisade_datapath::events::BACKLOG_CAPACITY;
use palisade_datapath::testenv::TestEnv;
use palisade_datapath::testrun::tcp_packet;
use palisade_datapath::{DROP_POLICY, Datapath, Direction, EndpointInfo, Program};

/// `lo`: exists in every namespace; BPF_PROG_TEST_RUN only needs the ifindex.
const LO_IFINDEX: u32 = 1;
const EP: u32 = 9;
/// Records the 1 MiB kernel ring holds (64 bytes each).
const KERNEL_RING: u64 = 16_384;
/// Events produced per step: just under what the kernel ring holds.
const STEP: u32 = 16_000;

#[test]
fn the_backlog_holds_what_the_kernel_ring_cannot_and_loses_nothing_silently() {
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
    // no policy: every run is denied (133) and emits one event
    let denied = tcp_packet([100, 64, 0, 2], [100, 64, 0, 3], 40000, 9999, 0x02);

    // Steps the reader keeps up with (it hands out a few hundred events per
    // step, emptying the kernel ring into its backlog as it goes), until
    // the backlog is full and the kernel ring overflows.
    let steps = (BACKLOG_CAPACITY as u64 + 2 * KERNEL_RING) / u64::from(STEP) + 1;
    let (mut produced, mut read) = (0u64, 0u64);
    let mut max_pending = 0;
    for _ in 0..steps {
        let r = dp
            .test_run(Program::FromContainer, &denied, LO_IFINDEX, STEP)
            .expect("BPF_PROG_TEST_RUN (run as root)");
        assert_eq!(r.retval, 2, "TC_ACT_SHOT");
        produced += u64::from(STEP);
        for _ in 0..300 {
            let ev = reader
                .next_timeout(Duration::ZERO)
                .expect("read")
                .expect("an event is waiting");
            assert_eq!((ev.ep_id, ev.drop_reason), (EP, DROP_POLICY));
            read += 1;
        }
        max_pending = max_pending.max(reader.pending());
    }
    assert_eq!(
        dp.counters(EP)
            .expect("counters")
            .dropped(Direction::Egress, DROP_POLICY),
        produced,
        "one drop per run"
    );
    assert!(
        max_pending <= BACKLOG_CAPACITY,
        "the backlog stays bounded: {max_pending}"
    );
    assert!(
        max_pending as u64 > KERNEL_RING,
        "the backlog held more than the kernel ring could: {max_pending}"
    );
    let lost = dp.events_lost().expect("events_lost");
    assert!(
        lost > 0,
        "the backlog filled up and the kernel ring overflowed"
    );

    read += reader.drain().len() as u64;
    assert_eq!(reader.pending(), 0);
    assert_eq!(produced, read + lost, "produced = read + lost");
    println!(
        "produced {produced}, read {read}, lost {lost} (backlog at most {max_pending} events)"
    );
}
