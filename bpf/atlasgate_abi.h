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

/* Address families as the kernel spells them (AF_INET, AF_INET6). */
#define AG_AF_INET 2
#define AG_AF_INET6 10

/* Value of the targets maps: which configured target owns an address. */
struct ag_target {
	__u32 index; /* position in the config's targets list */
	__u32 flags; /* AG_TARGET_* */
};

#define AG_TARGET_STATIC 0x1 /* from targets[].addresses, never retired */

/* Origin target index of a connection redirected only because of
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
	__u32 target_index;
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
	AG_CNT_SKIP_DAEMON, /* the daemon's own connection */
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
	AG_CNT__MAX,
};

#ifdef AG_COUNTER_NAMES
/* Metric names for the counters above, index for index. */
static const char *const ag_counter_names[AG_CNT__MAX] = {
	"connect4",
	"connect6",
	"redirected4",
	"redirected6",
	"skip_daemon",
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
};
#endif

#endif /* ATLASGATE_ABI_H */
