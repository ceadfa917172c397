/* The planned sockets an iter/tcp program acts on, and the identity check.
 *
 * User space fills `planned` (a hash map sized to the plan) keyed by socket
 * cookie, each value the socket's 4-tuple as the plan saw it. A socket is
 * acted on only if its cookie is in the map AND its addresses and ports are
 * still the planned ones: a 4-tuple reused by a new socket has another
 * cookie and is never looked at.
 */
#ifndef SOCKDOCTOR_PLANNED_H
#define SOCKDOCTOR_PLANNED_H

#define AF_INET 2
#define AF_INET6 10
#define TCP_TIME_WAIT 6
#define TCP_NEW_SYN_RECV 12

struct tuple {
	__u16 family;
	__u16 sport;    /* host byte order, like skc_num */
	__be16 dport;   /* network byte order, like skc_dport */
	__u16 pad;
	__u8 saddr[16]; /* IPv4: the first 4 bytes */
	__u8 daddr[16];
};

/* What a program reports per planned socket it met: code 0 or -errno. */
struct outcome {
	__u64 cookie;
	__s32 code;
	__u32 state;
};

static __always_inline bool same_addr(const __u8 *want, const struct in6_addr *have)
{
	const __u32 *w = (const __u32 *)want;

	return w[0] == have->in6_u.u6_addr32[0] && w[1] == have->in6_u.u6_addr32[1] &&
	       w[2] == have->in6_u.u6_addr32[2] && w[3] == have->in6_u.u6_addr32[3];
}

static __always_inline bool same_tuple(struct sock_common *skc, const struct tuple *t)
{
	unsigned short family = skc->skc_family;

	if (family != t->family || skc->skc_num != t->sport || skc->skc_dport != t->dport)
		return false;
	if (family == AF_INET)
		return skc->skc_rcv_saddr == *(const __u32 *)t->saddr &&
		       skc->skc_daddr == *(const __u32 *)t->daddr;
	return same_addr(t->saddr, &skc->skc_v6_rcv_saddr) &&
	       same_addr(t->daddr, &skc->skc_v6_daddr);
}

#endif
