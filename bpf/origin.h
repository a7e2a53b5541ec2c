/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
#ifndef ATLASGATE_ORIGIN_H
#define ATLASGATE_ORIGIN_H

#include "maps.h"

/*
 * Saves where a redirected connect() was going, and who made it, under the
 * socket's cookie. Returns 0, or a negative errno when the map refused it.
 */
static __always_inline int ag_record_origin(struct bpf_sock_addr *ctx, const __u8 *addr,
					    int addr_len, __u16 family, __u32 target_id)
{
	struct ag_origin o = {};
	__u64 cookie = bpf_get_socket_cookie(ctx);
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct ag_creator *c = 0;
	struct bpf_sock *sk = ctx->sk;
	long err;

	/* The agent is the socket's creator (see sock_create.bpf.c). */
	if (sk)
		c = bpf_sk_storage_get(&ag_creators, sk, 0, 0);
	if (c) {
		o.cgroup_id = c->cgroup_id;
		o.pid = c->pid;
		__builtin_memcpy(o.comm, c->comm, sizeof(o.comm));
		o.flags = AG_ORIGIN_CREATOR;
		if (c->pid != tgid) {
			o.flags |= AG_ORIGIN_HANDED;
			ag_count(AG_CNT_HANDED);
		}
	} else {
		/* Made before the cgroup was attached: the caller's cgroup must
		 * itself be under an attached root, or the daemon refuses it. */
		ag_count(AG_CNT_NO_CREATOR);
		o.cgroup_id = bpf_get_current_cgroup_id();
		o.pid = tgid;
		bpf_get_current_comm(o.comm, sizeof(o.comm));
	}
	o.netns_cookie = bpf_get_netns_cookie(ctx);
	o.created_ns = bpf_ktime_get_ns();
	if (addr_len == 16)
		__builtin_memcpy(o.orig_addr, addr, 16);
	else
		__builtin_memcpy(o.orig_addr, addr, 4);
	o.orig_port = ctx->user_port;
	o.family = family;
	o.target_id = target_id;

	err = bpf_map_update_elem(&ag_origins, &cookie, &o, BPF_ANY);
	if (err) {
		ag_count(AG_CNT_ORIGIN_UPDATE_ERR);
		return (int)err;
	}
	return 0;
}

#endif /* ATLASGATE_ORIGIN_H */
