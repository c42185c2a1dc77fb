/* SPDX-License-Identifier: GPL-2.0 */
/* Endpoints: which host-side veth (ifindex) belongs to which endpoint. */
#ifndef PALISADE_ENDPOINT_H
#define PALISADE_ENDPOINT_H

#include "common.h"

#define EP_ENFORCE_INGRESS 0x1
#define EP_ENFORCE_EGRESS 0x2

struct endpoint_info {
	__u32 ep_id;
	__u32 identity;
	__u32 flags; /* EP_ENFORCE_* */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32); /* ifindex of the host-side veth */
	__type(value, struct endpoint_info);
	__uint(max_entries, 65536);
} endpoints SEC(".maps");

/* Fast path: the same entries in an ARRAY indexed by ifindex for ifindexes
 * below ENDPOINTS_FAST_MAX (an array lookup is inlined, a hash lookup hashes
 * and walks a bucket). User space writes `endpoints` first and this second,
 * removes here first; an entry without EP_PRESENT falls back to `endpoints`. */
#define ENDPOINTS_FAST_MAX 65536
#define EP_PRESENT 0x80000000U

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct endpoint_info);
	__uint(max_entries, ENDPOINTS_FAST_MAX);
} endpoints_fast SEC(".maps");

/* Copies the endpoint behind `ifindex` into `out`; 0 if there is none. */
static __always_inline int endpoint_lookup(__u32 ifindex, struct endpoint_info *out)
{
	struct endpoint_info *ep;

	if (ifindex < ENDPOINTS_FAST_MAX) {
		ep = bpf_map_lookup_elem(&endpoints_fast, &ifindex);
		if (ep && (ep->flags & EP_PRESENT)) {
			*out = *ep;
			return 1;
		}
	}
	ep = bpf_map_lookup_elem(&endpoints, &ifindex);
	if (!ep)
		return 0;
	*out = *ep;
	return 1;
}

static __always_inline int endpoint_enforces(const struct endpoint_info *ep, __u8 dir)
{
	return ep->flags & (dir == DIR_EGRESS ? EP_ENFORCE_EGRESS : EP_ENFORCE_INGRESS);
}

#endif
