//! The kernel ring is the event backlog: it holds a quarter of a million
//! events without loss, events nobody has read stay in the pinned ring when
//! the reader and the datapath go away (an agent stopping) and the next
//! reader of the same pins gets every one of them, in order, once. A ring
//! pinned by an earlier build with a smaller size is adopted as it is.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use aya::maps::{MapData, MapInfo};
use palisade_datapath::events::{EVENT_RECORD_BYTES, EVENTS_RING_BYTES};
use palisade_datapath::testenv::TestEnv;
use palisade_datapath::testrun::tcp_packet;
use palisade_datapath::{
    DROP_POLICY, Datapath, DatapathEvent, Direction, EndpointInfo, EventReader, Program, Verdict,
};

/// `lo`: exists in every namespace; BPF_PROG_TEST_RUN only needs the ifindex.
const LO_IFINDEX: u32 = 1;
const EP: u32 = 9;
/// Events left unread across the restart: more than 200,000, fewer than
/// the ring holds.
const HELD: u32 = 250_000;

/// A datapath on `env`'s pins with one enforcing endpoint on `lo` and its
/// event reader.
fn load(env: &TestEnv) -> (Datapath, EventReader) {
    let mut dp = Datapath::load_or_adopt(env.config()).expect("load or adopt the datapath");
    let reader = dp.event_reader().expect("event reader");
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
    (dp, reader)
}

/// Runs `from_container` `n` times on a packet no policy allows: `n`
/// denied drops, each emitting one event (or counting one lost).
fn produce(dp: &Datapath, n: u32) {
    let denied = tcp_packet([100, 64, 0, 2], [100, 64, 0, 3], 40000, 9999, 0x02);
    let r = dp
        .test_run(Program::FromContainer, &denied, LO_IFINDEX, n)
        .expect("BPF_PROG_TEST_RUN (run as root)");
    assert_eq!(r.retval, 2, "TC_ACT_SHOT");
}

fn drops(dp: &Datapath) -> u64 {
    dp.counters(EP)
        .expect("counters")
        .dropped(Direction::Egress, DROP_POLICY)
}

/// Every event is one of `produce`'s, and they come out in the order they
/// were produced.
fn check_events(events: &[DatapathEvent]) {
    assert!(
        events.iter().all(|e| e.ep_id == EP
            && e.verdict == Verdict::Dropped
            && e.drop_reason == DROP_POLICY),
        "only the denied runs' events"
    );
    assert!(
        events
            .windows(2)
            .all(|w| w[0].timestamp_ns <= w[1].timestamp_ns),
        "in production order"
    );
}

#[test]
fn the_kernel_ring_keeps_unread_events_across_a_restart() {
    let env = TestEnv::new().expect("test env");
    let (dp, reader) = load(&env);
    assert_eq!(
        reader.ring_bytes(),
        EVENTS_RING_BYTES,
        "a new ring has this build's size"
    );
    assert_eq!(reader.capacity(), 262_143);
    assert!(u64::from(HELD) < reader.capacity());

    // nobody reads while the datapath emits
    produce(&dp, HELD);
    assert_eq!(drops(&dp), u64::from(HELD), "one drop per run");
    assert_eq!(
        dp.events_lost().expect("events_lost"),
        0,
        "the ring held them all"
    );
    assert_eq!(reader.unread(), u64::from(HELD));

    // the agent stops: its reader and datapath go, the pins stay
    drop(reader);
    drop(dp);

    // the next agent adopts the pins and reads what the last one left
    let (dp, mut reader) = load(&env);
    assert_eq!(reader.unread(), u64::from(HELD));
    let events = reader.drain();
    assert_eq!(
        events.len() as u64,
        u64::from(HELD),
        "every unread event, once"
    );
    check_events(&events);
    assert_eq!(dp.events_lost().expect("events_lost"), 0);
    assert_eq!(reader.unread(), 0);
    assert!(reader.drain().is_empty(), "read once");

    // a reader of the pins in another process sees the same ring, now empty
    let mut other = EventReader::open_pinned(&env.pin_root).expect("open pinned");
    assert_eq!(other.ring_bytes(), EVENTS_RING_BYTES);
    assert_eq!(other.unread(), 0);
    assert!(other.drain().is_empty());
}

/// `BPF_MAP_TYPE_RINGBUF` of `bytes` pinned at `path`, as an earlier build
/// of the datapath created it.
fn pin_ring(path: &Path, bytes: u32) {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_RINGBUF: u32 = 27;
    /// The head of `union bpf_attr` for BPF_MAP_CREATE (the rest zero).
    #[repr(C)]
    #[derive(Default)]
    struct MapCreateAttr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        inner_map_fd: u32,
        numa_node: u32,
        map_name: [u8; 16],
        rest: [u64; 8],
    }
    let mut attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_RINGBUF,
        max_entries: bytes,
        ..Default::default()
    };
    attr.map_name[..6].copy_from_slice(b"events");
    // SAFETY: attr is a valid bpf_attr prefix that outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &mut attr as *mut MapCreateAttr,
            std::mem::size_of::<MapCreateAttr>() as u32,
        )
    };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the syscall returned a new fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let map = MapData::from_fd(fd).expect("map from fd");
    map.pin(path).expect("pin the old ring");
}

#[test]
fn a_smaller_ring_pinned_by_an_earlier_build_is_adopted_as_it_is() {
    const OLD_BYTES: u32 = 1 << 20; // the 1 MiB ring of earlier builds
    // the kernel keeps the producer one byte short of the consumer
    let old_capacity = u64::from(OLD_BYTES / EVENT_RECORD_BYTES) - 1;
    let env = TestEnv::new().expect("test env");
    std::fs::create_dir_all(&env.pin_root).expect("pin root");
    let ring_pin = env.pin_root.join("events");
    pin_ring(&ring_pin, OLD_BYTES);
    let old_id = MapInfo::from_pin(&ring_pin).expect("old ring").id();

    // loading works, on the ring that is there (not a new one)
    let (dp, reader) = load(&env);
    assert_eq!(reader.ring_bytes(), OLD_BYTES);
    assert_eq!(reader.capacity(), 16_383);
    assert_eq!(MapInfo::from_pin(&ring_pin).expect("ring").id(), old_id);

    // unread events survive a restart in the old ring too
    produce(&dp, 10_000);
    assert_eq!(reader.unread(), 10_000);
    drop(reader);
    drop(dp);
    let (dp, mut reader) = load(&env);
    assert_eq!(MapInfo::from_pin(&ring_pin).expect("ring").id(), old_id);
    let events = reader.drain();
    assert_eq!(events.len(), 10_000, "every unread event, once");
    check_events(&events);
    assert_eq!(dp.events_lost().expect("events_lost"), 0);

    // and its smaller size is the one that counts when it fills up
    let over = 3_000;
    produce(&dp, old_capacity as u32 + over);
    assert_eq!(reader.unread(), old_capacity);
    let events = reader.drain();
    check_events(&events);
    assert_eq!(
        events.len() as u64,
        old_capacity,
        "the old ring held its size"
    );
    assert_eq!(
        dp.events_lost().expect("events_lost"),
        u64::from(over),
        "produced = read + lost"
    );
    assert_eq!(drops(&dp), 10_000 + old_capacity + u64::from(over));
}
