/* SPDX-License-Identifier: GPL-2.0 */
/* Shared definitions for Palisade's datapath programs.
 *
 * Every struct in these headers has a byte-for-byte twin in the Rust crate
 * (the Rust modules, #[repr(C)]); change both together. */
#ifndef PALISADE_COMMON_H
#define PALISADE_COMMON_H

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef TC_SEC
#define TC_SEC "classifier" /* aya 0.14 only recognises "classifier" */
#endif

/* Traffic direction, from the endpoint's (pod's) point of view. */
#define DIR_INGRESS 0
#define DIR_EGRESS 1

/* Verdicts reported in events and counters. */
#define VERDICT_FORWARDED 0
#define VERDICT_DROPPED 1
#define VERDICT_REDIRECTED 2

/* Drop reasons (Cilium's numbers). */
#define REASON_NONE 0
#define DROP_POLICY 133      /* default deny: no entry matched */
#define DROP_POLICY_DENY 181 /* an explicit deny entry matched */

/* Reserved identities. */
#define IDENTITY_WILDCARD 0
#define IDENTITY_WORLD 2

/* The 5-tuple of one packet (addresses in network order, ports in host
 * order; for ICMP, sport = echo id and dport = ICMP type, see conntrack.h). */
struct pkt_tuple {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 tcp_flags; /* TCP flag byte (FIN=0x01 SYN=0x02 RST=0x04 ACK=0x10) */
	__u8 icmp_type;
	__u8 is_fragment; /* non-first fragment: no L4 header */
	__u16 icmp_id;
	__u16 _pad;
};

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

#endif
