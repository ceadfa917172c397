/* The planned sockets an iter/tcp program acts on, the identity check, the outcomes.
 *
 * User space fills `planned` (a hash map sized to the plan) keyed by socket
 * cookie, each value the socket's 4-tuple as the plan saw it and its index
 * in the plan. A socket is acted on only if its cookie is in the map AND its
 * addresses and ports are still the planned ones: a 4-tuple reused by a new
 * socket has another cookie and is never looked at. `states`, when not 0, is
 * the mask of TCP states the socket may still be acted on in: one that has
 * moved on since the plan (another hand sent its FIN) is refused in the same
 * pass, under its lock, instead of being looked up again beforehand.
 *
 * Outcomes go to the `outcomes` array at the socket's index, not to the
 * iterator's output: a read() that ends mid-bucket makes the TCP iterator
 * resume by position, and a socket this pass destroyed is no longer there
 * to be shown again, so a record that did not fit would be lost. Without
 * output the whole pass runs in one read(). The first outcome stays.
 */
#ifndef SOCKDOCTOR_PLANNED_H
#define SOCKDOCTOR_PLANNED_H

#define AF_INET 2
#define AF_INET6 10
#define TCP_TIME_WAIT 6
#define TCP_NEW_SYN_RECV 12
#define EALREADY 114

struct tuple {
	__u16 family;
	__u16 sport;    /* host byte order, like skc_num */
	__be16 dport;   /* network byte order, like skc_dport */
	__u16 pad;
	__u32 index;    /* in the plan, and in `outcomes` */
	__u32 states;   /* 1 << state for each state it may be acted on in; 0: any */
	__u8 saddr[16]; /* IPv4: the first 4 bytes */
	__u8 daddr[16];
};

/* The includer defines `struct outcome`, what its program did to a planned socket
 * it met; it starts with `__u32 met; __s32 code; __u32 state;` (code 0 or -errno). */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1); /* user space sizes both to the plan before loading */
	__type(key, __u64);
	__type(value, struct tuple);
} planned SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct outcome);
} outcomes SEC(".maps");

/* The planned entry of this socket, or NULL; *out its outcome slot if not yet filled. */
static __always_inline struct tuple *lookup_planned(struct sock_common *skc,
						    struct outcome **out)
{
	__u64 cookie = bpf_get_socket_cookie(skc);
	struct tuple *want = bpf_map_lookup_elem(&planned, &cookie);
	__u32 index;

	if (!want)
		return NULL;
	index = want->index;
	*out = bpf_map_lookup_elem(&outcomes, &index);
	if (!*out || (*out)->met)
		return NULL;
	(*out)->met = 1;
	(*out)->state = skc->skc_state;
	return want;
}

/* Read the socket's addresses onto the stack first: compared in place, clang may
 * merge the loads from the socket and from the map into one instruction, which
 * the verifier refuses (one instruction, two kinds of pointer). */
static __always_inline bool same_tuple(struct sock_common *skc, const struct tuple *t)
{
	unsigned short family = skc->skc_family;
	const __u32 *ws = (const __u32 *)t->saddr, *wd = (const __u32 *)t->daddr;
	__u32 have[8] = {};

	if (family != t->family || skc->skc_num != t->sport || skc->skc_dport != t->dport)
		return false;
	if (family == AF_INET) {
		have[0] = skc->skc_rcv_saddr;
		have[4] = skc->skc_daddr;
	} else {
		have[0] = skc->skc_v6_rcv_saddr.in6_u.u6_addr32[0];
		have[1] = skc->skc_v6_rcv_saddr.in6_u.u6_addr32[1];
		have[2] = skc->skc_v6_rcv_saddr.in6_u.u6_addr32[2];
		have[3] = skc->skc_v6_rcv_saddr.in6_u.u6_addr32[3];
		have[4] = skc->skc_v6_daddr.in6_u.u6_addr32[0];
		have[5] = skc->skc_v6_daddr.in6_u.u6_addr32[1];
		have[6] = skc->skc_v6_daddr.in6_u.u6_addr32[2];
		have[7] = skc->skc_v6_daddr.in6_u.u6_addr32[3];
	}
	asm volatile("" : : "r"(have) : "memory"); /* the stores happen here */
	return have[0] == ws[0] && have[1] == ws[1] && have[2] == ws[2] && have[3] == ws[3] &&
	       have[4] == wd[0] && have[5] == wd[1] && have[6] == wd[2] && have[7] == wd[3];
}

/* Whether the socket left the states it may be acted on in since the plan. */
static __always_inline bool moved_on(struct sock_common *skc, const struct tuple *t)
{
	__u32 states = t->states;

	return states && !(states & (1U << (skc->skc_state & 31)));
}

#endif
