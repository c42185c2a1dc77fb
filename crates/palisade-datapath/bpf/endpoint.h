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

static __always_inline struct endpoint_info *endpoint_lookup(__u32 ifindex)
{
	return bpf_map_lookup_elem(&endpoints, &ifindex);
}

static __always_inline int endpoint_enforces(const struct endpoint_info *ep, __u8 dir)
{
	return ep->flags & (dir == DIR_EGRESS ? EP_ENFORCE_EGRESS : EP_ENFORCE_INGRESS);
}

#endif
