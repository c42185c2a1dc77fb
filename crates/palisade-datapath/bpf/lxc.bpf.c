// SPDX-License-Identifier: GPL-2.0
/* Palisade's per-endpoint programs, attached with TCX to the HOST side of an
 * endpoint's veth pair:
 *   from_container: TCX ingress  = traffic leaving the pod  (pod egress)
 *   to_container:   TCX egress   = traffic entering the pod (pod ingress)
 */
#include "common.h"
#include "endpoint.h"
#include "ipcache.h"
#include "policy.h"
#include "conntrack.h"
#include "events.h"
#include "counters.h"

char LICENSE[] SEC("license") = "GPL";

/* Copies `len` packet bytes at `off` into `to`: direct packet access when
 * they are in the linear part (the common case, no helper call), else
 * bpf_skb_load_bytes. Returns < 0 when the bytes are not there. */
static __always_inline int pkt_load(struct __sk_buff *skb, __u32 off, void *to, const __u32 len)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	if (off <= 256 && data + off + len <= data_end) {
		__builtin_memcpy(to, data + off, len);
		return 0;
	}
	return bpf_skb_load_bytes(skb, off, to, len);
}

/* Parses an IPv4 header at `off` and its L4 ports/flags into `t`.
 * Returns the L4 offset, or -1 if the header cannot be read. */
static __always_inline int parse_ipv4(struct __sk_buff *skb, __u32 off, struct pkt_tuple *t,
				      int ports_only)
{
	struct iphdr iph;
	__u32 l4;

	if (pkt_load(skb, off, &iph, sizeof(iph)) < 0)
		return -1;
	if (iph.version != 4 || iph.ihl < 5)
		return -1;
	t->saddr = iph.saddr;
	t->daddr = iph.daddr;
	t->proto = iph.protocol;
	l4 = off + iph.ihl * 4;
	if (iph.frag_off & bpf_htons(0x1fff)) {
		t->is_fragment = 1; /* no L4 header in non-first fragments */
		return l4;
	}
	switch (iph.protocol) {
	case IPPROTO_TCP: {
		__u8 hdr[14];

		if (ports_only ? pkt_load(skb, l4, hdr, 4) < 0 :
				 pkt_load(skb, l4, hdr, sizeof(hdr)) < 0)
			return l4;
		t->sport = ((__u16)hdr[0] << 8) | hdr[1];
		t->dport = ((__u16)hdr[2] << 8) | hdr[3];
		if (!ports_only)
			t->tcp_flags = hdr[13];
		break;
	}
	case IPPROTO_UDP: {
		__u8 hdr[4];

		if (pkt_load(skb, l4, hdr, sizeof(hdr)) < 0)
			return l4;
		t->sport = ((__u16)hdr[0] << 8) | hdr[1];
		t->dport = ((__u16)hdr[2] << 8) | hdr[3];
		break;
	}
	case IPPROTO_ICMP: {
		__u8 hdr[8];

		if (pkt_load(skb, l4, hdr, sizeof(hdr)) < 0)
			return l4;
		t->icmp_type = hdr[0];
		/* as Cilium: the ICMP type takes the destination port's place */
		t->dport = hdr[0];
		t->sport = 0;
		if (hdr[0] == 0 || hdr[0] == 8) /* echo reply / request */
			t->icmp_id = ((__u16)hdr[4] << 8) | hdr[5];
		break;
	}
	default:
		break;
	}
	return l4;
}

static __always_inline void emit_event(struct __sk_buff *skb, __u32 ep_id, __u32 local_id,
				       __u32 remote_id, const struct pkt_tuple *t, __u8 dir,
				       const struct policy_verdict *v, __u8 ct_state)
{
	struct policy_event *ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);

	if (!ev) {
		events_lost_inc();
		return;
	}
	ev->ts_ns = bpf_ktime_get_ns();
	ev->ep_id = ep_id;
	ev->ifindex = skb->ifindex;
	ev->local_identity = local_id;
	ev->remote_identity = remote_id;
	ev->saddr = t->saddr;
	ev->daddr = t->daddr;
	ev->sport = t->sport;
	ev->dport = t->dport;
	ev->proto = t->proto;
	ev->direction = dir;
	ev->verdict = v->verdict;
	ev->match_type = v->match_type;
	ev->drop_reason = v->reason;
	ev->tcp_flags = t->tcp_flags;
	ev->ct_state = ct_state;
	ev->cookie = v->cookie;
	ev->proxy_port = v->proxy_port;
	ev->_pad = 0;
	ev->pkt_len = skb->len;
	bpf_ringbuf_submit(ev, 0);
}

static __always_inline int handle(struct __sk_buff *skb, __u8 dir)
{
	struct pkt_tuple t = {}, inner = {};
	struct policy_verdict v = {};
	struct endpoint_info ep;
	struct ct_entry *fwd = 0;
	__u32 rev, ep_id = 0, local_id = 0, remote_id, l4;
	__u16 proto;
	int enforce = 1, ct, has_inner = 0, off;
	__u64 now;

	if (pkt_load(skb, offsetof(struct ethhdr, h_proto), &proto, sizeof(proto)) < 0)
		return TC_ACT_OK;
	if (proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK; /* ARP passes; IPv6 is not enforced yet */

	off = parse_ipv4(skb, sizeof(struct ethhdr), &t, 0);
	if (off < 0)
		return TC_ACT_OK; /* not a valid IPv4 header: the stack drops it */
	l4 = off;

	if (t.proto == IPPROTO_ICMP && !t.is_fragment && ct_is_icmp_error(t.icmp_type)) {
		/* embedded original packet: IPv4 header right after the 8-byte ICMP header */
		if (parse_ipv4(skb, l4 + 8, &inner, 1) >= 0) {
			has_inner = 1;
			if (inner.proto == IPPROTO_ICMP) {
				__u8 hdr[6];

				if (pkt_load(skb, l4 + 8 + 20 + 4, hdr, 2) >= 0)
					inner.icmp_id = ((__u16)hdr[0] << 8) | hdr[1];
			}
		}
	}

	if (endpoint_lookup(skb->ifindex, &ep)) {
		ep_id = ep.ep_id;
		local_id = ep.identity;
		enforce = endpoint_enforces(&ep, dir);
	}
	/* an interface we are attached to without an endpoint: default deny */
	/* conntrack time: the coarse monotonic clock (same base as
	 * CLOCK_MONOTONIC, tick granularity) is far cheaper than a clock read,
	 * and lets established flows skip rewriting last_seen within a tick */
	now = bpf_ktime_get_coarse_ns();
	rev = policy_revision_get();

	ct = ct_lookup(ep_id, &t, has_inner ? &inner : 0, dir, now, &fwd);
	if (ct == CT_REPLY || ct == CT_RELATED) {
		counters_add(ep_id, dir, VERDICT_FORWARDED, REASON_NONE, skb->len);
		return TC_ACT_OK;
	}
	if (ct == CT_ESTABLISHED && fwd && fwd->policy_rev == rev && fwd->cached_verdict) {
		/* nothing changed since this flow's last policy check */
		__u8 cached = fwd->cached_verdict - 1;

		counters_add(ep_id, dir, cached, REASON_NONE, skb->len);
		if (cached == VERDICT_REDIRECTED)
			return l7_proxy_redirect(skb, fwd->proxy_port);
		return TC_ACT_OK;
	}

	remote_id = ipcache_identity(dir == DIR_EGRESS ? t.daddr : t.saddr);
	if (enforce) {
		policy_can_access(ep_id, remote_id, dir, t.proto, t.is_fragment ? 0 : t.dport, &v);
	} else {
		v.verdict = VERDICT_FORWARDED;
		v.match_type = MATCH_NONE;
	}

	if (v.verdict == VERDICT_DROPPED) {
		if (fwd)
			fwd->cached_verdict = 0;
		counters_add(ep_id, dir, VERDICT_DROPPED, v.reason, skb->len);
		emit_event(skb, ep_id, local_id, remote_id, &t, dir, &v, (__u8)ct);
		return TC_ACT_SHOT;
	}

	if (ct == CT_NEW) {
		ct_create(ep_id, &t, dir, v.proxy_port, now, rev, v.verdict);
		emit_event(skb, ep_id, local_id, remote_id, &t, dir, &v, (__u8)ct);
	} else {
		if (fwd) {
			fwd->policy_rev = rev;
			fwd->cached_verdict = v.verdict + 1;
			fwd->proxy_port = v.proxy_port;
		}
		if (ct == CT_REOPENED)
			emit_event(skb, ep_id, local_id, remote_id, &t, dir, &v, (__u8)ct);
	}
	counters_add(ep_id, dir, v.verdict, REASON_NONE, skb->len);

	if (v.verdict == VERDICT_REDIRECTED)
		return l7_proxy_redirect(skb, v.proxy_port);
	return TC_ACT_OK;
}

SEC(TC_SEC)
int from_container(struct __sk_buff *skb)
{
	return handle(skb, DIR_EGRESS);
}

SEC(TC_SEC)
int to_container(struct __sk_buff *skb)
{
	return handle(skb, DIR_INGRESS);
}
