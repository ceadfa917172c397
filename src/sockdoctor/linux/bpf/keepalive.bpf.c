// SPDX-License-Identifier: GPL-2.0
/* keepalive: bpf_setsockopt() on the planned sockets of this network namespace.
 *
 * iter/tcp runs the program on each full socket with its lock held, which is
 * what bpf_setsockopt() needs (Linux 5.15+): SO_KEEPALIVE, TCP_KEEPINTVL,
 * TCP_KEEPCNT, TCP_USER_TIMEOUT if asked, and TCP_KEEPIDLE last (setting it
 * re-arms the timer from the time the connection has already been idle, as
 * the pidfd path does). The options are read back before and after with
 * bpf_getsockopt(). The owning process is never stopped or even looked at.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#define EOPNOTSUPP 95
#define ESTALE 116
#define SOL_SOCKET 1
#define SO_KEEPALIVE 9
#define SOL_TCP 6
#define TCP_KEEPIDLE 4
#define TCP_KEEPINTVL 5
#define TCP_KEEPCNT 6
#define TCP_USER_TIMEOUT 18
#define OPTIONS 5

struct outcome {
	__u32 met;
	__s32 code;
	__u32 state;
	__u32 pad;
	__s32 before[OPTIONS]; /* keepalive, idle, interval, count, user timeout */
	__s32 after[OPTIONS];
};

#include "planned.h"

struct settings {
	__s32 value[OPTIONS]; /* as `before`; user timeout < 0: left as it is */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct settings);
} wanted SEC(".maps");

static __always_inline void read_options(struct tcp_sock *tp, __s32 *into)
{
	bpf_getsockopt(tp, SOL_SOCKET, SO_KEEPALIVE, &into[0], sizeof(__s32));
	bpf_getsockopt(tp, SOL_TCP, TCP_KEEPIDLE, &into[1], sizeof(__s32));
	bpf_getsockopt(tp, SOL_TCP, TCP_KEEPINTVL, &into[2], sizeof(__s32));
	bpf_getsockopt(tp, SOL_TCP, TCP_KEEPCNT, &into[3], sizeof(__s32));
	bpf_getsockopt(tp, SOL_TCP, TCP_USER_TIMEOUT, &into[4], sizeof(__s32));
}

static __always_inline int set_options(struct tcp_sock *tp, struct settings *s)
{
	int one = 1, v, err;

	err = bpf_setsockopt(tp, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	v = s->value[2];
	if (!err)
		err = bpf_setsockopt(tp, SOL_TCP, TCP_KEEPINTVL, &v, sizeof(v));
	v = s->value[3];
	if (!err)
		err = bpf_setsockopt(tp, SOL_TCP, TCP_KEEPCNT, &v, sizeof(v));
	v = s->value[4];
	if (!err && v >= 0)
		err = bpf_setsockopt(tp, SOL_TCP, TCP_USER_TIMEOUT, &v, sizeof(v));
	v = s->value[1];
	if (!err)
		err = bpf_setsockopt(tp, SOL_TCP, TCP_KEEPIDLE, &v, sizeof(v));
	return err;
}

SEC("iter/tcp")
int keepalive_planned(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct outcome *out = NULL;
	struct settings *s;
	struct tcp_sock *tp;
	struct tuple *want;
	__u32 zero = 0;

	if (!skc)
		return 0;
	want = lookup_planned(skc, &out);
	s = bpf_map_lookup_elem(&wanted, &zero);
	if (!want || !out || !s)
		return 0;
	if (!same_tuple(skc, want)) {
		out->code = -ESTALE;
		return 0;
	}
	tp = bpf_skc_to_tcp_sock(skc);
	if (!tp) {
		out->code = -EOPNOTSUPP; /* TIME-WAIT or a request: nothing to arm */
		return 0;
	}
	read_options(tp, out->before);
	out->code = set_options(tp, s);
	read_options(tp, out->after);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
