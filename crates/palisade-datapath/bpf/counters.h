/* SPDX-License-Identifier: GPL-2.0 */
/* Per-endpoint packet/byte counters by direction, verdict and drop reason.
 *
 * Fast path: a PERCPU_ARRAY `counters_fast` indexed by
 * ep_id * COUNTERS_SLOTS + direction * COUNTERS_KINDS + kind for endpoints
 * with ep_id < COUNTERS_FAST_EPS and the four (verdict, reason) kinds the
 * datapath produces (no hashing, no insert). Everything else falls back to
 * the PERCPU_HASH `counters`. Readers sum both. */
#ifndef PALISADE_COUNTERS_H
#define PALISADE_COUNTERS_H

#include "common.h"

struct counter_key {
	__u32 ep_id;
	__u8 direction;
	__u8 verdict;
	__u16 reason;
};

struct counter_value {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, struct counter_key);
	__type(value, struct counter_value);
	__uint(max_entries, 65536);
} counters SEC(".maps");

#define COUNTERS_FAST_EPS 4096
#define COUNTERS_KINDS 4 /* forwarded, dropped/133, dropped/181, redirected */
#define COUNTERS_SLOTS (2 * COUNTERS_KINDS)

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct counter_value);
	__uint(max_entries, COUNTERS_FAST_EPS * COUNTERS_SLOTS);
} counters_fast SEC(".maps");

/* Index of (verdict, reason) in counters_fast, or -1. */
static __always_inline int counters_kind(__u8 verdict, __u16 reason)
{
	if (verdict == VERDICT_FORWARDED && reason == REASON_NONE)
		return 0;
	if (verdict == VERDICT_DROPPED && reason == DROP_POLICY)
		return 1;
	if (verdict == VERDICT_DROPPED && reason == DROP_POLICY_DENY)
		return 2;
	if (verdict == VERDICT_REDIRECTED && reason == REASON_NONE)
		return 3;
	return -1;
}

static __always_inline void counters_add_slow(__u32 ep_id, __u8 dir, __u8 verdict, __u16 reason,
					 __u32 bytes)
{
	struct counter_key key = {
		.ep_id = ep_id, .direction = dir, .verdict = verdict, .reason = reason,
	};
	struct counter_value *v = bpf_map_lookup_elem(&counters, &key);

	if (v) {
		/* per-CPU value: no atomics needed */
		v->packets += 1;
		v->bytes += bytes;
	} else {
		struct counter_value init = { .packets = 1, .bytes = bytes };

		bpf_map_update_elem(&counters, &key, &init, BPF_NOEXIST);
	}
}

static __always_inline void counters_add(__u32 ep_id, __u8 dir, __u8 verdict, __u16 reason,
					 __u32 bytes)
{
	int kind = counters_kind(verdict, reason);

	if (kind >= 0 && ep_id < COUNTERS_FAST_EPS && dir <= DIR_EGRESS) {
		__u32 idx = ep_id * COUNTERS_SLOTS + dir * COUNTERS_KINDS + kind;
		struct counter_value *v = bpf_map_lookup_elem(&counters_fast, &idx);

		if (v) {
			/* per-CPU value: no atomics needed */
			v->packets += 1;
			v->bytes += bytes;
			return;
		}
	}
	counters_add_slow(ep_id, dir, verdict, reason, bytes);
}

#endif
