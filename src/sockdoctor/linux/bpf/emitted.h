// SPDX-License-Identifier: GPL-2.0
/* What aggregate.bpf.c and groups.bpf.c share: the kernel types they read, and
 * the record a socket is written out as (what sock_diag would say of it, 80
 * bytes; linux/bpf/aggregate.py decodes it for both).
 *
 * Kernel types are named here with a "___rec" flavour: libbpf matches them
 * to the kernel's by the name before "___", and they cannot clash with the
 * shared vmlinux.h whatever it grows.
 */
#ifndef SOCKDOCTOR_EMITTED_H
#define SOCKDOCTOR_EMITTED_H

#define AF_INET 2
#define TCP_ESTABLISHED 1
#define TCP_SYN_RECV 3
#define TCP_TIME_WAIT 6
#define TCP_LISTEN 10
#define TCP_NEW_SYN_RECV 12

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)
struct socket_alloc___rec {
	struct { int state; } socket;	/* struct socket comes first: &socket == &alloc */
	struct inode vfs_inode;
};

struct sock___rec {
	struct sock_common __sk_common;
	struct socket_alloc___rec *sk_socket;
	__u32 sk_ack_backlog;
	__u32 sk_max_ack_backlog;
};

struct tcp_sock___rec {
	__u32 rcv_nxt;
	__u32 copied_seq;
	__u32 write_seq;
	__u32 snd_una;
	__u32 rcv_tstamp;
};

struct inet_timewait_sock___rec {
	volatile unsigned char tw_substate;
};

struct tcp_timewait_sock___rec {
	struct inet_timewait_sock___rec tw_sk;
};
#pragma clang attribute pop

extern unsigned int CONFIG_HZ __kconfig __weak;

struct record {			/* one written socket: 80 bytes */
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

static __always_inline __u8 reported_state(struct sock_common *skc)
{
	__u8 state = skc->skc_state;
	struct tcp_timewait_sock___rec *tw;

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

static __always_inline __u64 inode_of(struct tcp_sock___rec *tp)
{
	struct socket_alloc___rec *sa = ((struct sock___rec *)tp)->sk_socket;

	return sa ? BPF_CORE_READ(sa, vfs_inode.i_ino) : 0;
}

static __always_inline void fill_full(struct record *r, struct sock_common *skc, __u8 state)
{
	struct tcp_sock___rec *tp = (void *)bpf_skc_to_tcp_sock(skc);
	struct sock___rec *sk = (void *)tp;
	int unread;

	if (!tp)
		return;
	r->inode = inode_of(tp);
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

/* This pass's running record: [0] of the array `map` ([1] stays zero and is
 * copied over [0] when a new iterator session starts). NULL if unreadable. */
#define THIS_PASS(map, session_var, ctx) ({					\
	__u32 zero_ = 0, one_ = 1;						\
	void *blank_;								\
	if ((ctx)->meta->session_id != (session_var)) {			\
		blank_ = bpf_map_lookup_elem(&(map), &one_);			\
		if (blank_)							\
			bpf_map_update_elem(&(map), &zero_, blank_, BPF_ANY);	\
		(session_var) = (ctx)->meta->session_id;			\
	}									\
	bpf_map_lookup_elem(&(map), &zero_);					\
})

#endif
