// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
#include "maps.h"
#include "member.h"

/*
 * socket() anywhere (attached at the cgroup2 root); only a member's sockets
 * are recorded (member.h). The agent is whoever creates a socket, not
 * whoever later calls connect() on it: a socket can be handed to another
 * process (SCM_RIGHTS, pidfd_getfd, fork then a move to another cgroup), and
 * the connect hooks run for the socket's cgroup whoever calls them. So the
 * creator's cgroup, tgid and comm are stored with the socket itself
 * (socket-local storage, freed with the socket) and connect4/connect6 name
 * the flow after them. Always returns 1: socket creation is never refused.
 */
SEC("cgroup/sock_create")
int ag_sock_create(struct bpf_sock *sk)
{
	struct ag_creator *c;

	if (sk->type != 1 /* SOCK_STREAM */)
		return 1;
	if (!ag_cgroup_member())
		return 1;
	c = bpf_sk_storage_get(&ag_creators, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!c) {
		ag_count(AG_CNT_CREATOR_UPDATE_ERR);
		return 1;
	}
	c->cgroup_id = bpf_get_current_cgroup_id();
	c->pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(c->comm, sizeof(c->comm));
	ag_count(AG_CNT_SOCK_CREATED);
	return 1;
}
