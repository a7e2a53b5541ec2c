// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
#include "maps.h"
#include "decide.h"
#include "origin.h"
#include "member.h"

/*
 * connect() of an IPv6 socket. A native IPv6 target is rewritten to [::1];
 * a v4-mapped target (::ffff:a.b.c.d, a dual-stack socket dialling IPv4) is
 * looked up in the IPv4 map and rewritten to ::ffff:127.0.0.1, so that it
 * lands on the IPv4 listener exactly like connect4 would have sent it.
 */
SEC("cgroup/connect6")
int ag_connect6(struct bpf_sock_addr *ctx)
{
	struct ag_conn_facts f = {};
	struct ag_addr6 daddr = {};
	__u32 counter = AG_CNT_REDIRECTED6;
	struct ag_target *t;
	__u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1];
	__u32 w2 = ctx->user_ip6[2], w3 = ctx->user_ip6[3];
	int mapped = w0 == 0 && w1 == 0 && w2 == bpf_htonl(0xffff);
	int verdict;

	__builtin_memcpy(&daddr.addr[0], &w0, 4);
	__builtin_memcpy(&daddr.addr[4], &w1, 4);
	__builtin_memcpy(&daddr.addr[8], &w2, 4);
	__builtin_memcpy(&daddr.addr[12], &w3, 4);
	if (mapped)
		t = bpf_map_lookup_elem(&ag_targets4, &w3);
	else
		t = bpf_map_lookup_elem(&ag_targets6, &daddr);
	if (!ag_connect_member(ctx, t, AG_CNT_CONNECT6))
		return 1;
	f.sock_type = ctx->type;
	f.dport = bpf_ntohs(ctx->user_port);
	f.is_target = t != NULL;
	f.refuse_quic = ag_refuse_quic;
	f.intercept_all = ag_intercept_all;
	f.mongo_port = ag_mongo_port;

	verdict = ag_decide(&f, &counter);
	ag_count(counter);
	if (verdict == AG_PASS)
		return 1;
	if (verdict == AG_REFUSE)
		return 0;

	if (mapped) {
		if (ag_record_origin(ctx, (const __u8 *)&w3, 4, AG_AF_INET, t ? t->id : AG_TARGET_NONE) < 0)
			return 0;
		ctx->user_ip6[3] = bpf_htonl(0x7f000001);
	} else {
		if (ag_record_origin(ctx, daddr.addr, 16, AG_AF_INET6, t ? t->id : AG_TARGET_NONE) < 0)
			return 0;
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = 0;
		ctx->user_ip6[3] = bpf_htonl(1);
	}
	ctx->user_port = bpf_htons(ag_proxy_port);
	return 1;
}
