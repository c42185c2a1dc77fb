/* SPDX-License-Identifier: GPL-2.0 */
/* Per-endpoint connection tracking.
 *
 * A key is the tuple of the packet that OPENED the connection plus the
 * direction it was opened in (from the endpoint's point of view). A packet in
 * direction `dir` is:
 *   - ESTABLISHED when key(tuple, dir) exists (the opening direction: re-checked
 *     against the current policy, so revoking a policy cuts the flow);
 *   - REPLY when key(reversed tuple, !dir) exists (skips policy);
 *   - RELATED when it is an ICMP error whose embedded packet belongs to a
 *     tracked connection (skips policy);
 *   - NEW otherwise (checked against policy; creates an entry if allowed).
 *
 * Entries are never deleted by the datapath: TCP FIN/RST only move the entry
 * to a short "closing" lifetime, so the last ACK of a teardown still finds it.
 * User space (gc_conntrack) deletes entries whose last_seen + lifetime has
 * passed; the datapath ignores such expired entries meanwhile. */
#ifndef PALISADE_CONNTRACK_H
#define PALISADE_CONNTRACK_H

#include "common.h"

#define NSEC_PER_SEC 1000000000ULL
#define CT_LIFETIME_TCP_SYN (60ULL * NSEC_PER_SEC)
#define CT_LIFETIME_TCP_ESTABLISHED (21600ULL * NSEC_PER_SEC)
#define CT_LIFETIME_TCP_CLOSE (10ULL * NSEC_PER_SEC)
#define CT_LIFETIME_NONTCP (60ULL * NSEC_PER_SEC)

/* Result of a lookup (also reported as ct_state in events). */
#define CT_NEW 0
#define CT_ESTABLISHED 1
#define CT_REPLY 2
#define CT_RELATED 3
#define CT_REOPENED 4

/* ct_entry.flags */
#define CT_F_SEEN_REPLY 0x01
#define CT_F_FWD_FIN 0x02
#define CT_F_REV_FIN 0x04
#define CT_F_RST 0x08
#define CT_F_CLOSING (CT_F_FWD_FIN | CT_F_REV_FIN | CT_F_RST)

struct ct_key {
	__u32 ep_id;
	__u32 saddr; /* network order */
	__u32 daddr; /* network order */
	__u16 sport; /* host order; ICMP echo: id */
	__u16 dport; /* host order; ICMP echo: id */
	__u8 proto;
	__u8 direction; /* DIR_* the connection was opened in */
	__u16 _pad;
};

struct ct_entry {
	__u64 last_seen_ns; /* bpf_ktime_get_ns() of the last packet */
	__u64 lifetime_ns;  /* expires at last_seen_ns + lifetime_ns */
	__u64 created_ns;
	__u64 packets_fwd;
	__u64 packets_rev;
	__u8 flags;        /* CT_F_* */
	__u8 tcp_flags_fwd; /* union of TCP flags seen in the opening direction */
	__u8 tcp_flags_rev;
	__u8 _pad1;
	__u16 proxy_port; /* host order; L7 redirect of this connection */
	__u16 _pad2;
	/* Verdict cache of the opening direction: valid while the global policy
	 * revision (policy.h) equals policy_rev. 0 = nothing cached. */
	__u32 policy_rev;
	__u8 cached_verdict; /* VERDICT_* + 1 */
	__u8 _pad3[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(max_entries, 262144);
} conntrack SEC(".maps");

static __always_inline int ct_is_icmp_error(__u8 type)
{
	return type == 3 /* dest unreachable */ || type == 11 /* time exceeded */ ||
	       type == 12 /* parameter problem */;
}

static __always_inline void ct_key_from(struct ct_key *key, __u32 ep_id, __u32 saddr,
					__u32 daddr, __u16 sport, __u16 dport, __u8 proto,
					__u8 dir)
{
	key->ep_id = ep_id;
	key->saddr = saddr;
	key->daddr = daddr;
	key->sport = sport;
	key->dport = dport;
	key->proto = proto;
	key->direction = dir;
	key->_pad = 0;
}

/* Ports used in the conntrack key: ICMP echo uses the id on both sides. */
static __always_inline void ct_ports(const struct pkt_tuple *t, __u16 *sport, __u16 *dport)
{
	if (t->proto == IPPROTO_ICMP) {
		*sport = t->icmp_id;
		*dport = t->icmp_id;
	} else {
		*sport = t->sport;
		*dport = t->dport;
	}
}

static __always_inline int ct_expired(const struct ct_entry *e, __u64 now)
{
	return now > e->last_seen_ns + e->lifetime_ns;
}

static __always_inline __u64 ct_lifetime(__u8 proto, __u8 flags)
{
	if (proto != IPPROTO_TCP)
		return CT_LIFETIME_NONTCP;
	if (flags & CT_F_CLOSING)
		return CT_LIFETIME_TCP_CLOSE;
	if (flags & CT_F_SEEN_REPLY)
		return CT_LIFETIME_TCP_ESTABLISHED;
	return CT_LIFETIME_TCP_SYN;
}

/* Updates a found entry for a packet seen in the opening (fwd=1) or reply
 * (fwd=0) direction. Returns CT_REOPENED when a SYN reopens a closing entry. */
static __always_inline int ct_update(struct ct_entry *e, const struct pkt_tuple *t, int fwd,
				     __u64 now)
{
	int ret = fwd ? CT_ESTABLISHED : CT_REPLY;
	__u8 flags = e->flags;

	if (t->proto == IPPROTO_TCP) {
		__u8 f = t->tcp_flags;

		if (fwd && (f & TCP_SYN) && !(f & TCP_ACK) && (flags & CT_F_CLOSING)) {
			/* port reuse: a fresh connection on a closing entry */
			flags = 0;
			e->tcp_flags_rev = 0;
			e->tcp_flags_fwd = 0;
			e->created_ns = now;
			ret = CT_REOPENED;
		}
		if (f & TCP_RST)
			flags |= CT_F_RST;
		if (f & TCP_FIN)
			flags |= fwd ? CT_F_FWD_FIN : CT_F_REV_FIN;
		if (fwd) {
			if ((e->tcp_flags_fwd | f) != e->tcp_flags_fwd)
				e->tcp_flags_fwd |= f;
		} else if ((e->tcp_flags_rev | f) != e->tcp_flags_rev) {
			e->tcp_flags_rev |= f;
		}
	}
	if (!fwd)
		flags |= CT_F_SEEN_REPLY;
	/* plain stores, and only of what changed: the entry's cache line stays
	 * clean on most packets of an established flow */
	if (e->flags != flags) {
		e->flags = flags;
		e->lifetime_ns = ct_lifetime(t->proto, flags);
	}
	if (e->last_seen_ns != now)
		e->last_seen_ns = now;
	/* packet counts are statistics: a lost increment under a concurrent
	 * update on another CPU is acceptable, a locked add per packet is not */
	if (fwd)
		e->packets_fwd += 1;
	else
		e->packets_rev += 1;
	return ret;
}

/* Looks the packet up; see the comment at the top of this file.
 * `inner` is the embedded tuple of an ICMP error (NULL otherwise). */
static __always_inline int ct_lookup(__u32 ep_id, const struct pkt_tuple *t,
				     const struct pkt_tuple *inner, __u8 dir, __u64 now,
				     struct ct_entry **fwd_entry)
{
	struct ct_key key;
	struct ct_entry *e;
	__u16 sport, dport;

	if (inner) {
		/* The embedded packet travelled the other way (!dir). */
		ct_ports(inner, &sport, &dport);
		ct_key_from(&key, ep_id, inner->saddr, inner->daddr, sport, dport, inner->proto,
			    !dir);
		e = bpf_map_lookup_elem(&conntrack, &key);
		if (e && !ct_expired(e, now))
			return CT_RELATED;
		ct_key_from(&key, ep_id, inner->daddr, inner->saddr, dport, sport, inner->proto,
			    dir);
		e = bpf_map_lookup_elem(&conntrack, &key);
		if (e && !ct_expired(e, now))
			return CT_RELATED;
		return CT_NEW;
	}

	ct_ports(t, &sport, &dport);
	ct_key_from(&key, ep_id, t->saddr, t->daddr, sport, dport, t->proto, dir);
	e = bpf_map_lookup_elem(&conntrack, &key);
	if (e && !ct_expired(e, now)) {
		*fwd_entry = e;
		return ct_update(e, t, 1, now);
	}

	ct_key_from(&key, ep_id, t->daddr, t->saddr, dport, sport, t->proto, !dir);
	e = bpf_map_lookup_elem(&conntrack, &key);
	if (e && !ct_expired(e, now))
		return ct_update(e, t, 0, now);

	return CT_NEW;
}

/* Creates (or replaces an expired) entry for an allowed new connection. */
static __always_inline void ct_create(__u32 ep_id, const struct pkt_tuple *t, __u8 dir,
				      __u16 proxy_port, __u64 now, __u32 policy_rev, __u8 verdict)
{
	struct ct_key key;
	struct ct_entry e = {};
	__u16 sport, dport;

	/* A lone RST never opens anything. */
	if (t->proto == IPPROTO_TCP && (t->tcp_flags & TCP_RST))
		return;
	ct_ports(t, &sport, &dport);
	ct_key_from(&key, ep_id, t->saddr, t->daddr, sport, dport, t->proto, dir);
	e.created_ns = now;
	e.last_seen_ns = now;
	e.packets_fwd = 1;
	e.proxy_port = proxy_port;
	e.policy_rev = policy_rev;
	e.cached_verdict = verdict + 1;
	if (t->proto == IPPROTO_TCP) {
		e.tcp_flags_fwd = t->tcp_flags;
		if (t->tcp_flags & TCP_FIN)
			e.flags |= CT_F_FWD_FIN;
	}
	e.lifetime_ns = ct_lifetime(t->proto, e.flags);
	bpf_map_update_elem(&conntrack, &key, &e, BPF_ANY);
}

#endif
