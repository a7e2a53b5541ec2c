/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
#ifndef ATLASGATE_MEMBER_H
#define ATLASGATE_MEMBER_H

/*
 * Is the current task in an attached cgroup?
 *
 * The programs are attached once, at the cgroup2 root, and run for every
 * task; membership is decided here from the members map, keyed by a hash of
 * the cgroup's path. A path, unlike a cgroup id, survives the cgroup being
 * removed and re-created (a restarted container or systemd unit): the new
 * cgroup is a member before its first process runs, so there is no moment
 * in which it is not redirected.
 *
 * The walk goes up the kernfs nodes from the task's cgroup to the anchor
 * (the cgroup the daemon's cgroup2 mount shows as its root) and hashes the
 * path top-down, checking every prefix: a cgroup below an attached one (a
 * delegated subtree, the launcher's per-agent cgroups) is a member too. The
 * verdict is cached by cgroup id for the current generation of the members
 * map: the daemon bumps the generation after every change, so a verdict
 * computed against an older map is never used. cgroup v2 cannot rename a
 * cgroup, so a path cannot change under a cached id.
 *
 * Failing closed: a path too deep to walk, or a name that cannot be read,
 * counts as a member: its connections reach the daemon, which refuses
 * anything not under an attached root (it checks the real path, not a
 * hash, so a hash collision also ends in a refusal, never in a credential).
 */

#include <bpf/bpf_core_read.h>

#include "maps.h"

/* kernfs_node.parent was renamed __parent (Linux 6.15). */
struct kernfs_node___pre615 {
	struct kernfs_node *parent;
} __attribute__((preserve_access_index));

static __always_inline struct kernfs_node *ag_kn_parent(struct kernfs_node *kn)
{
	if (bpf_core_field_exists(kn->__parent))
		return BPF_CORE_READ(kn, __parent);
	return BPF_CORE_READ((struct kernfs_node___pre615 *)kn, parent);
}

struct ag_walk {
	__u64 anchor;
	struct kernfs_node *kn; /* next node to look at; 0 past the root */
	struct kernfs_node *ring[AG_MEMBER_DEPTH_MAX];
	__u64 h;
	char *buf;
	int depth;
	int found; /* reached the anchor */
	int member;
	int levels;
};

/* bpf_loop() callback: one level up from the task's cgroup. */
static int ag_walk_up(__u32 i, struct ag_walk *w)
{
	struct kernfs_node *kn = w->kn;

	if (!kn)
		return 1;
	if (BPF_CORE_READ(kn, id) == w->anchor) {
		w->found = 1;
		return 1;
	}
	/* The levels nearest the anchor are the ones a member path can name:
	 * keep the last AG_MEMBER_DEPTH_MAX seen. */
	w->ring[w->depth & (AG_MEMBER_DEPTH_MAX - 1)] = kn;
	w->depth++;
	w->kn = ag_kn_parent(kn);
	return 0;
}

/* bpf_loop() callback: hash one more level, top-down, and look it up. */
static int ag_hash_down(__u32 i, struct ag_walk *w)
{
	struct kernfs_node *level;
	const char *name;
	long n;
	int j;

	if ((int)i >= w->levels)
		return 1;
	level = w->ring[(w->depth - 1 - (int)i) & (AG_MEMBER_DEPTH_MAX - 1)];
	name = BPF_CORE_READ(level, name);
	n = bpf_probe_read_kernel_str(w->buf, AG_MEMBER_NAME_MAX, name);
	if (n <= 0) {
		w->member = 1; /* unreadable: fail closed */
		return 1;
	}
	n -= 1; /* the NUL */
	w->h = ag_path_hash_level(w->h, (__u64)n);
	for (j = 0; j < AG_MEMBER_NAME_MAX / 8; j++) {
		__u64 word;

		if (j * 8 >= n)
			break;
		word = *(__u64 *)(w->buf + j * 8);
		if (n - j * 8 < 8)
			word &= (1ULL << ((n - j * 8) * 8)) - 1;
		w->h = ag_path_hash_word(w->h, word);
	}
	if (bpf_map_lookup_elem(&ag_members, &w->h)) {
		w->member = 1;
		return 1;
	}
	return 0;
}

static __always_inline int ag_walk_membership(__u64 anchor, __u64 seed)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct ag_walk w = {};
	__u32 zero = 0;

	ag_count(AG_CNT_MEMBER_WALKS);
	w.anchor = anchor;
	w.kn = BPF_CORE_READ(task, cgroups, dfl_cgrp, kn);
	w.h = seed;
	bpf_loop(AG_MEMBER_WALK_MAX, ag_walk_up, &w, 0);
	if (!w.found) {
		if (!w.kn)
			return 0; /* not below the daemon's cgroup2 root at all */
		ag_count(AG_CNT_MEMBER_DEEP);
		return 1;
	}
	/* (The mount root itself is never a member: Loader::attach refuses it,
	 * as it holds the daemon.) */
	w.buf = bpf_map_lookup_elem(&ag_name_scratch, &zero);
	if (!w.buf)
		return 1;
	w.levels = w.depth < AG_MEMBER_DEPTH_MAX ? w.depth : AG_MEMBER_DEPTH_MAX;
	bpf_loop(AG_MEMBER_DEPTH_MAX, ag_hash_down, &w, 0);
	return w.member;
}

static __always_inline int ag_cgroup_member(void)
{
	__u64 id = bpf_get_current_cgroup_id();
	struct ag_member_verdict *cached, fresh = {};
	struct ag_control *ctl;
	__u32 zero = 0;
	__u64 gen;

	ctl = bpf_map_lookup_elem(&ag_control, &zero);
	if (!ctl || !ctl->anchor_id)
		return 0; /* no daemon has configured membership yet */
	/* The generation is read before the members map: a verdict computed
	 * from a map the daemon changes meanwhile is stored under the old
	 * generation and so never used. */
	gen = *(volatile __u64 *)&ctl->gen;
	cached = bpf_map_lookup_elem(&ag_member_cache, &id);
	if (cached && cached->gen == gen)
		return cached->member;
	fresh.gen = gen;
	fresh.member = ag_walk_membership(ctl->anchor_id, ctl->seed);
	bpf_map_update_elem(&ag_member_cache, &id, &fresh, BPF_ANY);
	return fresh.member;
}

/*
 * A socket is a member's when a member created it (sock_create stored its
 * creator, which it does for members only); a socket without a record (made
 * before the programs were loaded, or by a non-member and handed over) is
 * judged by the process calling connect().
 */
static __always_inline int ag_socket_member(struct bpf_sock *sk)
{
	if (sk && bpf_sk_storage_get(&ag_creators, sk, 0, 0))
		return 1;
	return ag_cgroup_member();
}

/*
 * The gate of connect4/6: is this connect() an agent's that the programs
 * must judge? Attached at the root, they run for every connect() on the
 * machine: only connections to a target (`t`; any connection, with all-tls;
 * any to a mongodb target's port) are worth the membership check, and only members' are counted (under
 * `connect_counter`). A non-member's connection to a target is counted as
 * skipped, unless the daemon dials it (its upstream connections are no
 * agent's skipped ones; the pid only spares a counter, it exempts nothing).
 */
static __always_inline int ag_connect_member(struct bpf_sock_addr *ctx, const struct ag_target *t,
					     __u32 connect_counter)
{
	if (!t && !ag_intercept_all && !(ag_mongo_port != 0 && bpf_ntohs(ctx->user_port) == ag_mongo_port))
		return 0;
	if (!ag_socket_member(ctx->sk)) {
		if (t && (__u32)(bpf_get_current_pid_tgid() >> 32) != ag_daemon_tgid)
			ag_count(AG_CNT_SKIP_NOT_MEMBER);
		return 0;
	}
	ag_count(connect_counter);
	return 1;
}

#endif /* ATLASGATE_MEMBER_H */
