/* SPDX-License-Identifier: GPL-2.0 */
/* Policy-verdict and drop events, sent through a ring buffer.
 * Emitted for drops and for allows of new connections only. */
#ifndef PALISADE_EVENTS_H
#define PALISADE_EVENTS_H

#include "common.h"

struct policy_event {
	__u64 ts_ns;
	__u32 ep_id;
	__u32 ifindex;
	__u32 local_identity;
	__u32 remote_identity;
	__u32 saddr; /* network order */
	__u32 daddr; /* network order */
	__u16 sport; /* host order */
	__u16 dport; /* host order; ICMP: type */
	__u8 proto;
	__u8 direction;
	__u8 verdict;
	__u8 match_type;
	__u16 drop_reason;
	__u8 tcp_flags;
	__u8 ct_state;
	__u32 cookie;
	__u16 proxy_port; /* host order */
	__u16 _pad;
	__u32 pkt_len;
};

/* 16 MiB: 262,144 records of 64 bytes (8-byte header + the 56-byte event),
 * 2.4 s at 110,000 events/s. The ring is the only event buffer: records
 * stay here until a reader consumes them, so unread events survive the
 * agent (the map is pinned). Must stay a power-of-two multiple of the page
 * size; EVENTS_RING_BYTES in src/events.rs mirrors it. A ring pinned by an
 * earlier build keeps its own size (see src/loader.rs). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 24);
} events SEC(".maps");

/* Events that could not be reserved in the ring (full): never silent. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} events_lost SEC(".maps");

static __always_inline void events_lost_inc(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&events_lost, &zero);

	if (n)
		*n += 1; /* per-CPU value: no atomics needed */
}

#endif
