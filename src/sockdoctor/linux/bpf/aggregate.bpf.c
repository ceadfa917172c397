// SPDX-License-Identifier: GPL-2.0
/* The sampler in the kernel: one pass over a namespace's TCP table that counts.
 *
 * Per socket it counts the state (as sock_diag reports it: a TIME-WAIT
 * socket's substate, SYN-RECV for a request) and marks its local port in a
 * bitmap; only the sockets whose state is in `emit_mask` (set by user space:
 * the exporter's CLOSE-WAIT and LISTEN) are written out, one record each,
 * with what sock_diag would say of them. When the walk is complete one last
 * record carries the counts and the bitmap. So a pass over 100k healthy
 * ESTABLISHED sockets writes a few kilobytes, not 100k records.
 *
 * Kernel types are named here with a "___agg" flavour: libbpf matches them
 * to the kernel's by the name before "___", and they cannot clash with the
 * shared vmlinux.h whatever it grows.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#define AF_INET 2
#define TCP_LISTEN 10
#define TCP_SYN_RECV 3
#define TCP_TIME_WAIT 6
#define TCP_NEW_SYN_RECV 12
#define STATES 16

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)
struct socket_alloc___agg {
	struct { int state; } socket;	/* struct socket comes first: &socket == &alloc */
	struct inode vfs_inode;
};

struct sock___agg {
	struct sock_common __sk_common;
	struct socket_alloc___agg *sk_socket;
	__u32 sk_ack_backlog;
	__u32 sk_max_ack_backlog;
};

struct tcp_sock___agg {
	__u32 rcv_nxt;
	__u32 copied_seq;
	__u32 write_seq;
	__u32 snd_una;
	__u32 rcv_tstamp;
};

struct inet_timewait_sock___agg {
	volatile unsigned char tw_substate;
};

struct tcp_timewait_sock___agg {
	struct inet_timewait_sock___agg tw_sk;
};
#pragma clang attribute pop

extern unsigned int CONFIG_HZ __kconfig __weak;

struct record {			/* one emitted socket: 80 bytes */
	__u64 cookie;
	__u64 inode;
	__u8 state;		/* as sock_diag reports it */
	__u8 pad;
	__u16 family;
	__u16 sport;		/* host byte order */
	__u16 dport;		/* host byte order */
	__u32 rqueue;		/* LISTEN: accept queue; else unread bytes */
	__u32 wqueue;		/* LISTEN: backlog; else unacknowledged bytes */
	__u32 uid;
	__u32 age_ms;		/* tcp_info's last_ack_recv; ~0: none */
	__u8 saddr[16];		/* IPv4: the first 4 bytes */
	__u8 daddr[16];
};

struct totals {			/* the last record: 8320 bytes */
	__u64 magic;		/* TOTALS_MAGIC, tells it from a socket record */
	__u64 sockets;
	__u64 states[STATES];	/* sockets per reported state */
	__u64 ports[1024];	/* bit p: some socket has local port p */
};
#define TOTALS_MAGIC 0x736f636b61676731ULL /* never a cookie: cookies count up from 1 */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} emit_mask SEC(".maps");

/* [0]: this pass's totals; [1]: always zero, copied over [0] when a pass starts */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct totals);
} totals SEC(".maps");

static __u64 session;		/* the iterator the totals are for */

static __always_inline __u8 reported_state(struct sock_common *skc)
{
	__u8 state = skc->skc_state;

	struct tcp_timewait_sock___agg *tw;

	if (state == TCP_TIME_WAIT) {
		tw = (void *)bpf_skc_to_tcp_timewait_sock(skc);
		return tw ? tw->tw_sk.tw_substate : state;
	}
	if (state == TCP_NEW_SYN_RECV)
		return TCP_SYN_RECV;
	return state;
}

static __always_inline __u32 jiffies_to_ms(__u32 j)
{
	unsigned int hz = CONFIG_HZ;

	if (!hz)
		return ~0U;
	if (1000 % hz == 0)
		return j * (1000 / hz);
	return (__u64)j * 1000 / hz;
}

static __always_inline void fill_full(struct record *r, struct sock_common *skc, __u8 state)
{
	struct tcp_sock___agg *tp = (void *)bpf_skc_to_tcp_sock(skc);
	struct sock___agg *sk = (void *)tp;
	struct socket_alloc___agg *sa;
	int unread;

	if (!tp)
		return;		/* TIME-WAIT or a request: no queues, no file */
	sa = sk->sk_socket;	/* SOCK_INODE(): the inode follows the socket */
	if (sa)
		r->inode = BPF_CORE_READ(sa, vfs_inode.i_ino);
	if (state == TCP_LISTEN) {
		r->rqueue = sk->sk_ack_backlog;
		r->wqueue = sk->sk_max_ack_backlog;
		return;
	}
	unread = tp->rcv_nxt - tp->copied_seq;
	r->rqueue = unread > 0 ? unread : 0;
	r->wqueue = tp->write_seq - tp->snd_una;
	r->age_ms = jiffies_to_ms((__u32)bpf_jiffies64() - tp->rcv_tstamp);
}

static __always_inline int emit(struct seq_file *seq, struct sock_common *skc, __u8 state,
				__u32 uid)
{
	struct record r = {};

	r.cookie = bpf_get_socket_cookie(skc);
	r.state = state;
	r.family = skc->skc_family;
	r.sport = skc->skc_num;
	r.dport = __builtin_bswap16(skc->skc_dport);
	r.uid = uid;
	r.age_ms = ~0U;
	if (r.family == AF_INET) {
		*(__u32 *)r.saddr = skc->skc_rcv_saddr;
		*(__u32 *)r.daddr = skc->skc_daddr;
	} else {
		__builtin_memcpy(r.saddr, skc->skc_v6_rcv_saddr.in6_u.u6_addr8, 16);
		__builtin_memcpy(r.daddr, skc->skc_v6_daddr.in6_u.u6_addr8, 16);
	}
	fill_full(&r, skc, state);
	return bpf_seq_write(seq, &r, sizeof(r));
}

SEC("iter/tcp")
int aggregate(struct bpf_iter__tcp *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct sock_common *skc = ctx->sk_common;
	__u32 zero = 0, one = 1, *mask;
	struct totals *t, *blank;
	__u16 port;
	__u8 state;

	if (ctx->meta->session_id != session) {	/* a new pass: start from zero */
		blank = bpf_map_lookup_elem(&totals, &one);
		if (!blank)
			return 0;
		bpf_map_update_elem(&totals, &zero, blank, BPF_ANY);
		session = ctx->meta->session_id;
	}
	t = bpf_map_lookup_elem(&totals, &zero);
	if (!t)
		return 0;
	if (!skc) {		/* the walk is complete (a refused write comes again) */
		t->magic = TOTALS_MAGIC;
		bpf_seq_write(seq, t, sizeof(*t));
		return 0;
	}
	state = reported_state(skc);
	mask = bpf_map_lookup_elem(&emit_mask, &zero);
	/* a record that did not fit is shown again in the next read: count it then */
	if (mask && (*mask >> (state & 31)) & 1 && emit(seq, skc, state, ctx->uid))
		return 0;
	t->sockets++;
	t->states[state & (STATES - 1)]++;
	port = skc->skc_num;
	t->ports[port >> 6] |= 1ULL << (port & 63);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
