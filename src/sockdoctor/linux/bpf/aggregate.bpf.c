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
 * The kernel types it reads and the record it writes are emitted.h's.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#define STATES 16

#include "emitted.h"

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


SEC("iter/tcp")
int aggregate(struct bpf_iter__tcp *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct sock_common *skc = ctx->sk_common;
	struct totals *t = THIS_PASS(totals, session, ctx);	/* a new pass starts from zero */
	__u32 zero = 0, *mask;
	__u16 port;
	__u8 state;

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
