/* SPDX-License-Identifier: GPL-2.0 */
/* Per-endpoint packet/byte counters by direction, verdict and drop reason. */
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

static __always_inline void counters_add(__u32 ep_id, __u8 dir, __u8 verdict, __u16 reason,
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

#endif
