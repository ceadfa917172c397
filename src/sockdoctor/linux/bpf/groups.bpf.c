// SPDX-License-Identifier: GPL-2.0
/* top's refresh in the kernel: one pass over a namespace's TCP table that groups.
 *
 * A healthy ESTABLISHED socket whose file's inode user space has placed
 * (`owners`: inode -> owner id, filled from the owner cache) is not written
 * out: it is counted in `groups` under top's group key, the owner id with
 * the service (the local port on the server side, where some listener of the
 * namespace has that port; else the peer's address and port), with its
 * unread bytes summed and tcp_info's age (last_ack_recv) maxed. Every other
 * socket (another state, no file, an inode not placed yet, a namespace
 * without listeners, a full group table) is written out as a record, for
 * user space to place as usual. Listeners come first in the walk (the
 * listening hash before the established one), so the listening ports are
 * known when the ESTABLISHED sockets come. The last record is the trailer.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>


#include "emitted.h"

struct group_key {		/* 24 bytes */
	__u32 owner;		/* user space's id of the owner's pids */
	__u16 port;		/* server side: local port; client side: the peer's */
	__u16 family;		/* 0 on the server side (then addr is zero) */
	__u8 addr[16];		/* client side: the peer's address */
};

struct group_val {
	__u64 count;
	__u64 recv_q;
	__u32 oldest_ms;	/* the largest last_ack_recv; ~0 while none */
	__u32 pad;
	__u64 since;		/* the smallest `since` of its sockets */
};

struct trailer {		/* the last record: 8224 bytes */
	__u64 magic;
	__u64 sockets;		/* all of them, written or grouped */
	__u64 grouped;
	__u64 listeners;
	__u64 listening[1024];	/* bit p: a listener has local port p */
};
#define TRAILER_MAGIC 0x736f636b67727031ULL /* never a cookie */

struct placed {			/* what user space knows of a socket file */
	__u32 owner;		/* its id of the owners' pids */
	__u32 pad;
	__u64 since;		/* since when in ESTABLISHED: a positive double's bits (they
				 * order as the doubles do) */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);	/* set by user space */
	__type(key, __u64);
	__type(value, struct placed);
} owners SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct group_key);
	__type(value, struct group_val);
} groups SEC(".maps");

/* [0]: this pass's trailer; [1]: always zero, copied over [0] when a pass starts */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct trailer);
} trailer SEC(".maps");

static __u64 session;


/* Count the socket in its group; 0 if it was, else it is to be written out. */
static __always_inline int group(struct sock_common *skc, struct trailer *t)
{
	struct tcp_sock___rec *tp = (void *)bpf_skc_to_tcp_sock(skc);
	struct group_key key = {};
	struct group_val *val, fresh = {};
	__u16 port = skc->skc_num;
	__u64 inode;
	struct placed *owner;
	__u32 age;
	int unread;

	if (!tp || !t->listeners)
		return 1;	/* no file; or the side rule needs every namespace's listeners */
	inode = inode_of(tp);
	owner = inode ? bpf_map_lookup_elem(&owners, &inode) : 0;
	if (!owner)
		return 1;
	key.owner = owner->owner;
	if ((t->listening[(port >> 6) & 1023] >> (port & 63)) & 1) {
		key.port = port;
	} else {
		key.port = __builtin_bswap16(skc->skc_dport);
		key.family = skc->skc_family;
		if (key.family == AF_INET)
			*(__u32 *)key.addr = skc->skc_daddr;
		else
			__builtin_memcpy(key.addr, skc->skc_v6_daddr.in6_u.u6_addr8, 16);
	}
	unread = tp->rcv_nxt - tp->copied_seq;
	age = jiffies_to_ms((__u32)bpf_jiffies64() - tp->rcv_tstamp);
	val = bpf_map_lookup_elem(&groups, &key);
	if (!val) {
		fresh.oldest_ms = ~0U;
		fresh.since = ~0ULL;
		if (bpf_map_update_elem(&groups, &key, &fresh, BPF_NOEXIST))
			return 1;	/* the table is full: written out instead */
		val = bpf_map_lookup_elem(&groups, &key);
		if (!val)
			return 1;
	}
	val->count++;
	val->recv_q += unread > 0 ? unread : 0;
	if (val->oldest_ms == ~0U || age > val->oldest_ms)
		val->oldest_ms = age;
	if (owner->since < val->since)
		val->since = owner->since;
	return 0;
}

SEC("iter/tcp")
int group_pass(struct bpf_iter__tcp *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct sock_common *skc = ctx->sk_common;
	struct trailer *t;
	__u16 port;
	__u8 state;

	t = THIS_PASS(trailer, session, ctx);	/* a new pass starts from zero */
	if (!t)
		return 0;
	if (!skc) {		/* the walk is complete */
		t->magic = TRAILER_MAGIC;
		bpf_seq_write(seq, t, sizeof(*t));
		return 0;
	}
	state = reported_state(skc);
	if (state == TCP_ESTABLISHED && !group(skc, t)) {
		t->grouped++;
		t->sockets++;
		return 0;
	}
	/* a record that did not fit is shown again in the next read: count it then */
	if (emit(seq, skc, state, ctx->uid))
		return 0;
	t->sockets++;
	if (state == TCP_LISTEN) {
		port = skc->skc_num;
		t->listeners++;
		t->listening[(port >> 6) & 1023] |= 1ULL << (port & 63);
	}
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
