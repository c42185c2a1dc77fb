/* SPDX-License-Identifier: GPL-2.0 */
/* The policy map and the verdict function (Cilium's __policy_can_access).
 *
 * ONE global LPM trie. A key always matches ep_id + identity + egress fully
 * (72 bits) and then 0 (any protocol), 8 (protocol only) or 8+N (protocol and
 * the top N bits of the port, N = 1..16) bits. */
#ifndef PALISADE_POLICY_H
#define PALISADE_POLICY_H

#include "common.h"

#define POLICY_FULL_PREFIX_BITS 72 /* ep_id(32) + identity(32) + egress(8) */

struct policy_key {
	__u32 prefixlen;
	__u32 ep_id;
	__u32 identity; /* remote identity; 0 = any */
	__u8 egress;
	__u8 protocol;
	__u16 dport; /* network order; ICMP: type */
};

struct policy_entry {
	__u16 proxy_port; /* network order; 0 = no L7 redirect */
	__u8 deny;
	__u8 port_prefix_len; /* 0 any proto, 8 proto only, 9..24 proto + port prefix */
	__u32 precedence;
	__u32 cookie;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct policy_key);
	__type(value, struct policy_entry);
	__uint(max_entries, 1 << 20);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} policy SEC(".maps");

/* Global policy revision, bumped by user space after every change that can
 * change a verdict (policy, ipcache, endpoints). Established connections
 * re-check policy only when it moved since their last check: revoking a
 * policy still cuts existing flows, without two LPM lookups per packet. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} policy_revision SEC(".maps");

static __always_inline __u32 policy_revision_get(void)
{
	__u32 zero = 0;
	__u64 *rev = bpf_map_lookup_elem(&policy_revision, &zero);

	return rev ? (__u32)*rev : 0;
}

/* Cilium's match types, reported in policy-verdict events. */
#define MATCH_NONE 0
#define MATCH_L3_ONLY 1
#define MATCH_L3_L4 2
#define MATCH_L4_ONLY 3
#define MATCH_ALL 4
#define MATCH_L3_PROTO 5
#define MATCH_PROTO_ONLY 6

#define PRECEDENCE_MAX 0xffffffffU

struct policy_verdict {
	__u8 verdict; /* VERDICT_* */
	__u8 match_type;
	__u16 reason;
	__u16 proxy_port; /* host order */
	__u16 _pad;
	__u32 cookie;
};

static __always_inline __u8 match_type_of(int is_l3, __u8 port_prefix_len)
{
	if (is_l3)
		return port_prefix_len == 0 ? MATCH_L3_ONLY :
		       port_prefix_len == 8 ? MATCH_L3_PROTO : MATCH_L3_L4;
	return port_prefix_len == 0 ? MATCH_ALL :
	       port_prefix_len == 8 ? MATCH_PROTO_ONLY : MATCH_L4_ONLY;
}

/* The two-lookup decision: exact identity, then wildcard identity. */
static __always_inline void policy_can_access(__u32 ep_id, __u32 remote_id, __u8 dir,
					      __u8 proto, __u16 dport_host,
					      struct policy_verdict *out)
{
	struct policy_key key = {
		.prefixlen = POLICY_FULL_PREFIX_BITS + 8 + 16,
		.ep_id = ep_id,
		.identity = remote_id,
		.egress = dir == DIR_EGRESS,
		.protocol = proto,
		.dport = bpf_htons(dport_host),
	};
	struct policy_entry *e, l3 = {}, l4 = {}, chosen;
	int have_l3 = 0, have_l4 = 0, is_l3;

	/* Values are copied out so the verifier never sees two map pointers merged. */
	e = bpf_map_lookup_elem(&policy, &key);
	if (e) {
		l3 = *e;
		have_l3 = 1;
	}
	if (!(have_l3 && l3.deny && l3.precedence == PRECEDENCE_MAX)) {
		key.identity = IDENTITY_WILDCARD;
		e = bpf_map_lookup_elem(&policy, &key);
		if (e) {
			l4 = *e;
			have_l4 = 1;
		}
	}

	if (have_l3 && have_l4) {
		/* higher precedence, then longer port prefix, then L3 */
		is_l3 = !(l4.precedence > l3.precedence ||
			  (l4.precedence == l3.precedence &&
			   l4.port_prefix_len > l3.port_prefix_len));
	} else if (have_l3) {
		is_l3 = 1;
	} else if (have_l4) {
		is_l3 = 0;
	} else {
		out->verdict = VERDICT_DROPPED;
		out->match_type = MATCH_NONE;
		out->reason = DROP_POLICY;
		out->proxy_port = 0;
		out->cookie = 0;
		return;
	}
	chosen = is_l3 ? l3 : l4;
	out->match_type = match_type_of(is_l3 && remote_id != IDENTITY_WILDCARD,
					chosen.port_prefix_len);
	out->cookie = chosen.cookie;
	out->proxy_port = bpf_ntohs(chosen.proxy_port);
	if (chosen.deny) {
		out->verdict = VERDICT_DROPPED;
		out->reason = DROP_POLICY_DENY;
	} else if (chosen.proxy_port) {
		out->verdict = VERDICT_REDIRECTED;
		out->reason = REASON_NONE;
	} else {
		out->verdict = VERDICT_FORWARDED;
		out->reason = REASON_NONE;
	}
}

/* L7 proxy redirection hook.
 *
 * A REDIRECTED verdict currently lets the packet pass unchanged and is only
 * reported as such in events and counters. The L7 proxy issue replaces this
 * with a socket lookup + bpf_sk_assign() to the proxy listening on
 * `proxy_port` (TCX ingress only, i.e. from_container / pod egress). */
static __always_inline int l7_proxy_redirect(struct __sk_buff *skb, __u16 proxy_port)
{
	(void)skb;
	(void)proxy_port;
	return TC_ACT_OK;
}

#endif
