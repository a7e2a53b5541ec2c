// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
#include "maps.h"
#include "decide.h"
#include "member.h"

/*
 * Unconnected UDP (sendto) to a target on 443 is QUIC going around the
 * terminator, exactly like a connected one: refuse it the same way, so that
 * HTTP/3-capable clients fall back to TCP at once.
 */
static __always_inline int ag_sendmsg_verdict(struct bpf_sock_addr *ctx, int is_target)
{
	struct ag_conn_facts f = {};
	__u32 counter = AG_CNT_SKIP_NOT_TCP;

	f.sock_type = ctx->type;
	f.dport = bpf_ntohs(ctx->user_port);
	f.is_target = is_target;
	f.refuse_quic = ag_refuse_quic;
	if (ag_decide(&f, &counter) == AG_REFUSE && ag_cgroup_member()) {
		ag_count(counter);
		return 0;
	}
	return 1;
}

SEC("cgroup/sendmsg4")
int ag_sendmsg4(struct bpf_sock_addr *ctx)
{
	__u32 daddr = ctx->user_ip4;

	return ag_sendmsg_verdict(ctx, bpf_map_lookup_elem(&ag_targets4, &daddr) != NULL);
}

SEC("cgroup/sendmsg6")
int ag_sendmsg6(struct bpf_sock_addr *ctx)
{
	struct ag_addr6 daddr = {};
	__u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1];
	__u32 w2 = ctx->user_ip6[2], w3 = ctx->user_ip6[3];
	int is_target;

	if (w0 == 0 && w1 == 0 && w2 == bpf_htonl(0xffff)) {
		is_target = bpf_map_lookup_elem(&ag_targets4, &w3) != NULL;
	} else {
		__builtin_memcpy(&daddr.addr[0], &w0, 4);
		__builtin_memcpy(&daddr.addr[4], &w1, 4);
		__builtin_memcpy(&daddr.addr[8], &w2, 4);
		__builtin_memcpy(&daddr.addr[12], &w3, 4);
		is_target = bpf_map_lookup_elem(&ag_targets6, &daddr) != NULL;
	}
	return ag_sendmsg_verdict(ctx, is_target);
}
