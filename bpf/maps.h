/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Maps and load-time configuration shared by every hook. Each .bpf.c file
 * includes this header; maps.bpf.c defines them, the others see externs, and
 * `bpftool gen object` links all of them into one object, so there is one
 * skeleton and the maps are shared by construction.
 */
#ifndef ATLASGATE_MAPS_H
#define ATLASGATE_MAPS_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "atlasgate_abi.h"

#ifdef AG_DEFINE_MAPS
#define AG_MAP
#define AG_RODATA(type, name, init) const volatile type name = init
#else
#define AG_MAP extern
#define AG_RODATA(type, name, init) extern const volatile type name
#endif

/* Set by the loader between skeleton open and load. */
AG_RODATA(__u16, ag_proxy_port, 15443); /* host order */
AG_RODATA(__u32, ag_daemon_tgid, 0); /* spares its own dials a skip count; exempts nothing */
AG_RODATA(__u8, ag_refuse_quic, 1);
AG_RODATA(__u8, ag_intercept_all, 0);
AG_RODATA(__u16, ag_mongo_port, 0); /* host order; 0 = no mongodb target */

/* Target addresses (IPv4, network order) -> which target owns them. */
AG_MAP struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, AG_MAX_TARGETS4);
	__type(key, __u32);
	__type(value, struct ag_target);
} ag_targets4 SEC(".maps");

AG_MAP struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, AG_MAX_TARGETS6);
	__type(key, struct ag_addr6);
	__type(value, struct ag_target);
} ag_targets6 SEC(".maps");

/* Socket cookie -> origin, from connect() until the socket closes. */
AG_MAP struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, AG_MAX_ORIGINS);
	__type(key, __u64);
	__type(value, struct ag_origin);
} ag_origins SEC(".maps");

/* Client (netns, address, port) -> origin, from establishment until accept. */
AG_MAP struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, AG_MAX_FLOWS);
	__type(key, struct ag_flow_key);
	__type(value, struct ag_origin);
} ag_flows SEC(".maps");

/* Socket-local: who created a TCP socket in an attached cgroup (sock_create). */
AG_MAP struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct ag_creator);
} ag_creators SEC(".maps");

/* Path hash -> attached path (see atlasgate_abi.h "Membership"). */
AG_MAP struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, AG_MAX_MEMBERS);
	__type(key, __u64);
	__type(value, struct ag_member);
} ag_members SEC(".maps");

/* Cgroup id -> membership verdict of the generation that computed it. */
AG_MAP struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, AG_MEMBER_CACHE);
	__type(key, __u64);
	__type(value, struct ag_member_verdict);
} ag_member_cache SEC(".maps");

AG_MAP struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ag_control);
} ag_control SEC(".maps");

/* Scratch space for one kernfs name (too big for the stack beside the rest). */
AG_MAP struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, char[AG_MEMBER_NAME_MAX]);
} ag_name_scratch SEC(".maps");

AG_MAP struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, AG_CNT__MAX);
	__type(key, __u32);
	__type(value, __u64);
} ag_counters SEC(".maps");

static __always_inline void ag_count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&ag_counters, &idx);

	if (v)
		*v += 1;
}

#endif /* ATLASGATE_MAPS_H */
