// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
#include "maps.h"

/*
 * getpeername() on a redirected socket reports the Atlas address the agent
 * dialled, not the loopback terminator, so that clients that log or check
 * their peer see the truth (Cilium's socket LB does the same). The origin
 * lives by socket cookie until the socket closes.
 */
SEC("cgroup/getpeername4")
int ag_getpeername4(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct ag_origin *o = bpf_map_lookup_elem(&ag_origins, &cookie);
	__u32 a;

	if (!o || o->family != AG_AF_INET)
		return 1;
	__builtin_memcpy(&a, o->orig_addr, 4);
	ctx->user_ip4 = a;
	ctx->user_port = o->orig_port;
	ag_count(AG_CNT_GETPEERNAME);
	return 1;
}

SEC("cgroup/getpeername6")
int ag_getpeername6(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct ag_origin *o = bpf_map_lookup_elem(&ag_origins, &cookie);
	__u32 w[4];

	if (!o)
		return 1;
	if (o->family == AG_AF_INET) {
		/* A dual-stack socket that dialled ::ffff:a.b.c.d. */
		w[0] = 0;
		w[1] = 0;
		w[2] = bpf_htonl(0xffff);
		__builtin_memcpy(&w[3], o->orig_addr, 4);
	} else {
		__builtin_memcpy(w, o->orig_addr, 16);
	}
	ctx->user_ip6[0] = w[0];
	ctx->user_ip6[1] = w[1];
	ctx->user_ip6[2] = w[2];
	ctx->user_ip6[3] = w[3];
	ctx->user_port = o->orig_port;
	ag_count(AG_CNT_GETPEERNAME);
	return 1;
}
