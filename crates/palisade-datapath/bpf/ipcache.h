/* SPDX-License-Identifier: GPL-2.0 */
/* ipcache: IPv4 prefix -> security identity (longest prefix wins). */
#ifndef PALISADE_IPCACHE_H
#define PALISADE_IPCACHE_H

#include "common.h"

struct ipcache_key {
	__u32 prefixlen; /* 0..=32 */
	__u32 addr;      /* network order */
};

struct ipcache_value {
	__u32 identity;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(max_entries, 524288);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} ipcache SEC(".maps");

/* Identity of an address; unknown addresses are "world". */
static __always_inline __u32 ipcache_identity(__u32 addr)
{
	struct ipcache_key key = { .prefixlen = 32, .addr = addr };
	struct ipcache_value *v = bpf_map_lookup_elem(&ipcache, &key);

	return v ? v->identity : IDENTITY_WORLD;
}

#endif
