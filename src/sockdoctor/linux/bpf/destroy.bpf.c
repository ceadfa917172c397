// SPDX-License-Identifier: GPL-2.0
/* destroy: bpf_sock_destroy() on the planned sockets of this network namespace.
 *
 * iter/tcp visits every TCP socket of the namespace of the process that
 * created the iterator, full sockets with their lock held; the kfunc then
 * aborts the connection as SOCK_DESTROY does (tcp_abort: the peer gets a
 * reset, the owner's next call fails with ECONNABORTED). One outcome per
 * planned socket met (planned.h): destroyed (0), another socket on its
 * 4-tuple (-ESTALE), in a state it may no longer be ended in, i.e. ended by
 * another hand since the plan (-EALREADY), or not a full socket
 * (-EOPNOTSUPP). User space gives a planned socket not met, or not a full
 * one, to SOCK_DESTROY, which finds it gone or destroys it.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct outcome {
	__u32 met;
	__s32 code;
	__u32 state;
	__u32 pad;
};

#include "planned.h"

#define EOPNOTSUPP 95
#define ESTALE 116

extern int bpf_sock_destroy(struct sock_common *sk) __ksym;

SEC("iter/tcp")
int destroy_planned(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct outcome *out = NULL;
	struct tuple *want;

	if (!skc)
		return 0;
	want = lookup_planned(skc, &out);
	if (!want || !out)
		return 0;
	if (!same_tuple(skc, want))
		out->code = -ESTALE;
	else if (moved_on(skc, want))
		out->code = -EALREADY;
	else if (!bpf_skc_to_tcp_sock(skc))
		out->code = -EOPNOTSUPP; /* TIME-WAIT or a request: not locked here; SOCK_DESTROY */
	else
		out->code = bpf_sock_destroy(skc);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
