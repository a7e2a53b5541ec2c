/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The one ABI between the BPF programs and the daemon: every map key, map
 * value and counter index lives here, written with fixed-width __u types
 * only. The .bpf.c files include it after vmlinux.h; C++ includes it after
 * <linux/types.h> and pins the layout with static_assert (userspace/bpf/abi.h).
 */
#ifndef ATLASGATE_ABI_H
#define ATLASGATE_ABI_H

#define AG_PIN_ROOT "/sys/fs/bpf/atlasgate"

#define AG_MAX_TARGETS4 4096
#define AG_MAX_TARGETS6 4096
#define AG_MAX_ORIGINS 65536
#define AG_MAX_FLOWS 65536

#define AG_COMM_LEN 16

/*
 * Membership: which cgroups are agents is decided in the kernel from the
 * members map, keyed by a hash of the cgroup's path (below the cgroup2 mount
 * the daemon sees), not by cgroup id: a cgroup removed and re-created at the
 * same path (a restarted container, a restarted systemd unit) is a member
 * from its first socket. See README "Membership".
 */
#define AG_MAX_MEMBERS 16384
#define AG_MEMBER_PATH_MAX 512 /* the path kept with each member (for the daemon) */
#define AG_MEMBER_DEPTH_MAX 16 /* levels below the mount a member path may have */
#define AG_MEMBER_WALK_MAX 1024 /* levels walked up before failing closed */
#define AG_MEMBER_NAME_MAX 256 /* a kernfs name, with its NUL */
#define AG_MEMBER_CACHE 16384

#define AG_FNV_PRIME 0x100000001b3ULL

/*
 * The path hash, level by level from the top: each name mixes in its length,
 * then its bytes eight at a time as native-endian words, the last one
 * zero-padded (the kernel and the daemon run on the same machine). It starts
 * from a random secret seed (ag_control.seed, readable by root only): the
 * steps are invertible, so with a known start anyone who can name a cgroup
 * could make its path hash to any value. The daemon still checks the real
 * path of every connection it serves.
 */
static inline __u64 ag_path_hash_word(__u64 h, __u64 word)
{
	return (h ^ word) * AG_FNV_PRIME;
}

static inline __u64 ag_path_hash_level(__u64 h, __u64 name_len)
{
	return ag_path_hash_word(h, 0x2f00000000000000ULL | name_len); /* '/' and the length */
}

/* Address families as the kernel spells them (AF_INET, AF_INET6). */
#define AG_AF_INET 2
#define AG_AF_INET6 10

/* Value of the targets maps: which target owns an address. */
struct ag_target {
	__u32 id; /* the daemon's id for the target's host (stable across reloads, not a config position) */
	__u32 flags; /* AG_TARGET_* */
};

#define AG_TARGET_STATIC 0x1 /* from targets[].addresses, never retired */

/* Origin target id of a connection redirected only because of
 * intercept: all-tls (its destination is no known target address). */
#define AG_TARGET_NONE 0xffffffffu

/* IPv6 targets map key (IPv4 uses a bare __u32 in network order). */
struct ag_addr6 {
	__u8 addr[16];
};

/*
 * Where a redirected connection was going and who opened it. Written in
 * connect4/6 keyed by socket cookie, copied by sockops once established
 * to the flows map, keyed by the client's own address.
 */
struct ag_origin {
	__u64 cgroup_id;
	__u64 netns_cookie;
	__u64 created_ns; /* bpf_ktime_get_ns() at connect */
	__u8 orig_addr[16]; /* IPv4: first 4 bytes, network order */
	__u16 orig_port; /* network order */
	__u16 family; /* AG_AF_INET or AG_AF_INET6 */
	__u32 pid; /* tgid of the socket's creator (of the connecting process if unknown) */
	__u32 target_id; /* ag_target.id, or AG_TARGET_NONE */
	__u32 flags; /* AG_ORIGIN_* */
	char comm[AG_COMM_LEN];
};

/* ag_origin.flags */
#define AG_ORIGIN_CREATOR 0x1 /* cgroup_id, pid, comm are the socket creator's (sock_create saw it) */
#define AG_ORIGIN_HANDED 0x2 /* connect() was called by another process than the creator */

/* Socket-local storage written at socket creation (cgroup/sock_create). */
struct ag_creator {
	__u64 cgroup_id;
	__u32 pid;
	__u32 _pad;
	char comm[AG_COMM_LEN];
};

/* Value of the members map (key: the path hash). */
struct ag_member {
	__u32 flags; /* AG_MEMBER_* */
	__u32 len; /* bytes of path used */
	char path[AG_MEMBER_PATH_MAX]; /* relative to the cgroup2 mount, no leading '/' */
};

#define AG_MEMBER_GUARD 0x1 /* a guard: its cgroups are held until named */

/* The membership cache: cgroup id -> verdict, valid while gen is current. */
struct ag_member_verdict {
	__u64 gen;
	__u32 member;
	__u32 _pad;
};

/* The one entry of the control map. */
struct ag_control {
	__u64 gen; /* bumped by the daemon after each change of the members map */
	__u64 anchor_id; /* cgroup id of the daemon's cgroup2 mount: paths are relative to it */
	__u64 seed; /* secret start of the path hash (random, kept with the pins) */
};

/* The client end of a redirected connection, as the daemon's accept sees it. */
struct ag_flow_key {
	__u64 netns_cookie;
	__u8 addr[16]; /* client address; IPv4: first 4 bytes, network order */
	__u16 port; /* client port, host order */
	__u16 family;
	__u32 _pad;
};

/* Per-CPU counters; every skip and error path in BPF bumps one. */
enum ag_counter {
	AG_CNT_CONNECT4 = 0, /* connect4 invocations */
	AG_CNT_CONNECT6,
	AG_CNT_REDIRECTED4,
	AG_CNT_REDIRECTED6,
	AG_CNT_SKIP_NOT_TCP, /* not a stream socket (TCP) */
	AG_CNT_SKIP_PORT, /* destination port is not 443 */
	AG_CNT_SKIP_NOT_TARGET, /* destination not in the targets map */
	AG_CNT_UDP_REFUSED, /* UDP/443 (QUIC) to a target refused */
	AG_CNT_ORIGIN_UPDATE_ERR, /* origin map update failed: connection refused */
	AG_CNT_ESTABLISHED, /* sockops saw a redirected socket establish */
	AG_CNT_ESTABLISHED_NO_ORIGIN, /* established socket to the proxy port without an origin */
	AG_CNT_FLOW_UPDATE_ERR, /* flows map update failed */
	AG_CNT_CLOSED, /* redirected socket closed, entries removed */
	AG_CNT_GETPEERNAME, /* getpeername rewritten to the original destination */
	AG_CNT_REDIRECTED_ANY, /* intercept: all-tls redirected a non-target TCP/443 connection */
	AG_CNT_SOCK_CREATED, /* sock_create recorded a TCP socket's creator */
	AG_CNT_CREATOR_UPDATE_ERR, /* socket storage refused: the creator is unknown */
	AG_CNT_NO_CREATOR, /* connect() of a socket whose creator is unknown (made before attach) */
	AG_CNT_HANDED, /* connect() by another process than the socket's creator */
	AG_CNT_SKIP_NOT_MEMBER, /* to a target, but from no attached cgroup */
	AG_CNT_MEMBER_WALKS, /* membership decided by walking the cgroup's path (cache miss) */
	AG_CNT_MEMBER_DEEP, /* path deeper than the walk bound: treated as a member (fail closed) */
	AG_CNT_REDIRECTED_MONGO, /* a TCP connection to a mongodb target's port redirected */
	AG_CNT__MAX,
};

#ifdef AG_COUNTER_NAMES
/* Metric names for the counters above, index for index. */
static const char *const ag_counter_names[AG_CNT__MAX] = {
	"connect4",
	"connect6",
	"redirected4",
	"redirected6",
	"skip_not_tcp",
	"skip_port",
	"skip_not_target",
	"udp_refused",
	"origin_update_err",
	"established",
	"established_no_origin",
	"flow_update_err",
	"closed",
	"getpeername",
	"redirected_any",
	"sock_created",
	"creator_update_err",
	"no_creator",
	"handed",
	"skip_not_member",
	"member_walks",
	"member_deep",
	"redirected_mongo",
};
#endif

#endif /* ATLASGATE_ABI_H */
