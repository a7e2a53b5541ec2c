// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
#include "maps.h"
#include "decide.h"
#include "origin.h"
#include "member.h"

/*
 * connect() of an IPv4 socket of an agent (member.h). A TCP connection to a
 * target on 443 is rewritten to the local terminator and its origin saved by
 * socket cookie; everything else passes untouched. Returns 1 to let connect()
 * proceed, 0 to fail it with EPERM.
 */
SEC("cgroup/connect4")
int ag_connect4(struct bpf_sock_addr *ctx)
{
	struct ag_conn_facts f = {};
	__u32 daddr = ctx->user_ip4;
	__u32 counter = AG_CNT_REDIRECTED4;
	struct ag_target *t;
	int verdict;

	t = bpf_map_lookup_elem(&ag_targets4, &daddr);
	if (!ag_connect_member(ctx, t, AG_CNT_CONNECT4))
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

	if (ag_record_origin(ctx, (const __u8 *)&daddr, 4, AG_AF_INET, t ? t->id : AG_TARGET_NONE) < 0)
		return 0; /* fail closed: an unrecorded flow would be refused anyway */
	ctx->user_ip4 = bpf_htonl(0x7f000001); /* 127.0.0.1 */
	ctx->user_port = bpf_htons(ag_proxy_port);
	return 1;
}
