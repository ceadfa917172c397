// SPDX-License-Identifier: GPL-2.0
/* destroy: bpf_sock_destroy() on the planned sockets of this network namespace.
 *
 * iter/tcp visits every TCP socket of the namespace of the process that
 * created the iterator, full sockets with their lock held; the kfunc then
 * aborts the connection as SOCK_DESTROY does (tcp_abort: the peer gets a
 * reset, the owner's next call fails with ECONNABORTED). One outcome per
 * planned socket met; a planned socket not met is gone (or was missed by a
 * concurrent rehash: user space falls back to SOCK_DESTROY for those).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "planned.h"

#define EOPNOTSUPP 95
#define ESTALE 116

extern int bpf_sock_destroy(struct sock_common *sk) __ksym;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1); /* user space sizes it to the plan before loading */
	__type(key, __u64);
	__type(value, struct tuple);
} planned SEC(".maps");

SEC("iter/tcp")
int destroy_planned(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct outcome out = {};
	struct tuple *want;
	__u64 cookie;

	if (!skc)
		return 0;
	cookie = bpf_get_socket_cookie(skc);
	want = bpf_map_lookup_elem(&planned, &cookie);
	if (!want)
		return 0;
	out.cookie = cookie;
	out.state = skc->skc_state;
	if (!same_tuple(skc, want))
		out.code = -ESTALE;
	else if (!bpf_skc_to_tcp_sock(skc))
		out.code = -EOPNOTSUPP; /* TIME-WAIT or a request: not locked here; SOCK_DESTROY */
	else
		out.code = bpf_sock_destroy(skc);
	bpf_seq_write(ctx->meta->seq, &out, sizeof(out));
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
