// SPDX-License-Identifier: GPL-2.0
/* sockets: every TCP socket of this network namespace as one fixed-size record.
 *
 * iter/tcp visits the listening and established tables of the namespace the
 * iterator was created in (full sockets with their lock held, TIME-WAIT and
 * request sockets as they are). For each socket that passes the query's state
 * mask and port set (`config`), we emit what an inet_diag_msg carries, with
 * the same rules as the kernel's sock_diag fill functions: a TIME-WAIT socket
 * reports its substate, a request socket SYN-RECV, queues are the accept
 * queue for a listener, the timer is the pending one; plus tcp_info's
 * last-ACK-received (the age), for full sockets. tcp_info itself, memory and
 * the other attributes stay sock_diag's (linux/bpf/sockets.py chooses).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define TCP_SYN_RECV 3
#define TCP_TIME_WAIT 6
#define TCP_LISTEN 10
#define TCP_NEW_SYN_RECV 12
#define ICSK_TIME_RETRANS 1
#define ICSK_TIME_PROBE0 3
#define ICSK_TIME_LOSS_PROBE 5
#define ICSK_TIME_REO_TIMEOUT 6
#define MAX_PORTS 16
#define NO_AGE 0xFFFFFFFF

extern unsigned int CONFIG_HZ __kconfig;

/* The kernel's own types under local names (CO-RE ignores the ___sd suffix):
 * only the fields read here, offsets taken from the running kernel's BTF. */
#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)
struct hlist_node___sd {
	struct hlist_node___sd *next, **pprev;
};
struct timer_list___sd {
	struct hlist_node___sd entry;
	unsigned long expires;
};
struct sock_common___sd {
	int skc_bound_dev_if;
};
struct sock___sd {
	struct sock_common __sk_common;
	struct timer_list___sd sk_timer;
	__u32 sk_ack_backlog;
	__u32 sk_max_ack_backlog;
	unsigned long sk_ino; /* Linux 6.18+: the socket's inode, cached */
	struct socket___sd *sk_socket;
};
struct socket___sd {
	int state;
};
struct inode___sd {
	unsigned long i_ino;
};
struct socket_alloc___sd {
	struct socket___sd socket;
	struct inode___sd vfs_inode;
};
struct inet_sock___sd {
	struct sock___sd sk;
};
struct inet_connection_sock___sd {
	struct inet_sock___sd icsk_inet;
	struct timer_list___sd icsk_retransmit_timer;
	unsigned long icsk_timeout; /* before Linux 6.15 */
	__u8 icsk_retransmits;
	__u8 icsk_pending;
	__u8 icsk_probes_out;
};
struct tcp_sock___sd {
	struct inet_connection_sock___sd inet_conn;
	__u32 rcv_nxt;
	__u32 copied_seq;
	__u32 write_seq;
	__u32 snd_una;
	__u32 rcv_tstamp;
};
struct inet_timewait_sock___sd {
	unsigned char tw_substate;
	struct timer_list___sd tw_timer;
};
struct tcp_timewait_sock___sd {
	struct inet_timewait_sock___sd tw_sk;
};
struct request_sock___sd {
	__u8 num_retrans;
	struct timer_list___sd rsk_timer;
};
struct inet_request_sock___sd {
	struct request_sock___sd req;
};
struct tcp_request_sock___sd {
	struct inet_request_sock___sd req;
};
#pragma clang attribute pop

/* What user space asks for; set in the one-entry `config` array before a run. */
struct config {
	__u32 states;   /* bit per state as sock_diag reports it */
	__u16 family;   /* 0: both */
	__u16 nports;   /* 0: every port; else local or peer port in ports[] */
	__u16 ports[MAX_PORTS];
};

/* 80 bytes per socket; linux/bpf/sockets.py decodes it (RECORD). */
struct record {
	__u8 family;
	__u8 state;
	__u8 timer;
	__u8 retrans;
	__u16 sport;        /* host byte order */
	__u16 dport;        /* host byte order */
	__u32 saddr[4];     /* IPv4: the first word */
	__u32 daddr[4];
	__u64 cookie;
	__u32 inode;
	__u32 uid;
	__u32 rqueue;
	__u32 wqueue;
	__u32 expires_ms;
	__u32 age_ms;       /* NO_AGE: none */
	__u32 ifindex;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} config SEC(".maps");

static __always_inline __u32 to_msecs(__s64 delta)
{
	__u64 hz = CONFIG_HZ, j;

	if (delta <= 0 || !hz)
		return 0;
	j = delta;
	if (1000 % hz == 0)
		return j * (1000 / hz);
	if (hz % 1000 == 0)
		return (j + hz / 1000 - 1) / (hz / 1000);
	return j * 1000 / hz;
}

static __always_inline __u32 delta_msecs(unsigned long expires, __u64 now)
{
	return to_msecs((__s64)(expires - now));
}

static __always_inline bool pending(struct timer_list___sd *t)
{
	return t->entry.pprev != NULL;
}

static __always_inline bool port_wanted(const struct config *c, __u16 sport, __u16 dport)
{
	__u32 n = c->nports;

	if (!n)
		return true;
	for (int i = 0; i < MAX_PORTS; i++) {
		if (i >= n)
			break;
		if (c->ports[i] == sport || c->ports[i] == dport)
			return true;
	}
	return false;
}

static __always_inline void full_socket(struct tcp_sock___sd *tp, struct record *r, __u64 now)
{
	struct inet_connection_sock___sd *icsk = &tp->inet_conn;
	struct sock___sd *sk = &icsk->icsk_inet.sk;
	__u8 pend = icsk->icsk_pending;
	unsigned long timeout;

	if (bpf_core_field_exists(icsk->icsk_timeout))
		timeout = icsk->icsk_timeout;
	else
		timeout = icsk->icsk_retransmit_timer.expires;
	if (pend == ICSK_TIME_RETRANS || pend == ICSK_TIME_REO_TIMEOUT ||
	    pend == ICSK_TIME_LOSS_PROBE) {
		r->timer = 1;
		r->retrans = icsk->icsk_retransmits;
		r->expires_ms = delta_msecs(timeout, now);
	} else if (pend == ICSK_TIME_PROBE0) {
		r->timer = 4;
		r->retrans = icsk->icsk_probes_out;
		r->expires_ms = delta_msecs(timeout, now);
	} else if (pending(&sk->sk_timer)) {
		r->timer = 2;
		r->retrans = icsk->icsk_probes_out;
		r->expires_ms = delta_msecs(sk->sk_timer.expires, now);
	}
	if (r->state == TCP_LISTEN) {
		r->rqueue = sk->sk_ack_backlog;
		r->wqueue = sk->sk_max_ack_backlog;
	} else {
		__s32 rq = tp->rcv_nxt - tp->copied_seq;

		r->rqueue = rq > 0 ? rq : 0;
		r->wqueue = tp->write_seq - tp->snd_una;
		r->age_ms = to_msecs((__u32)((__u32)now - tp->rcv_tstamp));
	}
	if (bpf_core_field_exists(sk->sk_ino)) {
		r->inode = sk->sk_ino;
	} else {
		struct socket___sd *sock = sk->sk_socket;

		if (sock)
			r->inode = BPF_CORE_READ((struct socket_alloc___sd *)sock, vfs_inode.i_ino);
	}
}

/* Timer, queues, uid and inode as sock_diag fills them for each kind of socket:
 * TIME-WAIT (inet_twsk_diag_fill), request (inet_req_diag_fill: uid and inode
 * 0), full (inet_sk_diag_fill). False: not the kind its state said. */
static __always_inline bool by_kind(struct sock_common *skc, struct record *r, __u32 uid)
{
	__u64 now = bpf_jiffies64();

	if (skc->skc_state == TCP_TIME_WAIT) {
		struct tcp_timewait_sock___sd *tw = (void *)bpf_skc_to_tcp_timewait_sock(skc);

		if (!tw)
			return false;
		r->timer = 3;
		r->expires_ms = delta_msecs(tw->tw_sk.tw_timer.expires, now);
	} else if (skc->skc_state == TCP_NEW_SYN_RECV) {
		struct tcp_request_sock___sd *req = (void *)bpf_skc_to_tcp_request_sock(skc);

		if (!req)
			return false;
		r->timer = 1;
		r->retrans = req->req.req.num_retrans;
		r->expires_ms = delta_msecs(req->req.req.rsk_timer.expires, now);
	} else {
		struct tcp_sock___sd *tp = (void *)bpf_skc_to_tcp_sock(skc);

		if (!tp)
			return false;
		full_socket(tp, r, now);
		r->uid = uid;
	}
	return true;
}

static __always_inline void addresses(struct sock_common *skc, struct record *r)
{
	if (r->family == AF_INET) {
		r->saddr[0] = skc->skc_rcv_saddr;
		r->daddr[0] = skc->skc_daddr;
		return;
	}
	for (int i = 0; i < 4; i++) {
		r->saddr[i] = skc->skc_v6_rcv_saddr.in6_u.u6_addr32[i];
		r->daddr[i] = skc->skc_v6_daddr.in6_u.u6_addr32[i];
	}
}

SEC("iter/tcp")
int dump_sockets(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct record r = {};
	struct config *c;
	__u32 zero = 0;

	if (!skc)
		return 0;
	c = bpf_map_lookup_elem(&config, &zero);
	if (!c)
		return 0;
	r.family = skc->skc_family;
	if (c->family && c->family != r.family)
		return 0;
	r.state = skc->skc_state;
	if (r.state == TCP_TIME_WAIT) {
		struct tcp_timewait_sock___sd *tw = (void *)bpf_skc_to_tcp_timewait_sock(skc);

		if (!tw)
			return 0;
		r.state = tw->tw_sk.tw_substate;
	} else if (r.state == TCP_NEW_SYN_RECV) {
		r.state = TCP_SYN_RECV;
	}
	if (!(c->states & (1u << (r.state & 31))))
		return 0;
	r.sport = skc->skc_num;
	r.dport = bpf_ntohs(skc->skc_dport);
	if (!port_wanted(c, r.sport, r.dport))
		return 0;
	r.age_ms = NO_AGE;
	if (!by_kind(skc, &r, ctx->uid))
		return 0;
	r.ifindex = ((struct sock_common___sd *)skc)->skc_bound_dev_if;
	r.cookie = bpf_get_socket_cookie(skc);
	addresses(skc, &r);
	bpf_seq_write(ctx->meta->seq, &r, sizeof(r));
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
