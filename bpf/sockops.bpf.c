// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
#include "maps.h"

/*
 * Follows redirected sockets of attached cgroups. Once the client end is
 * established its own (netns, address, port) is known, and that is all the
 * daemon sees of it after accept(): the origin is copied under that key.
 * This runs in tcp_finish_connect(), before the client's final ACK is sent,
 * so the entry exists before the daemon can accept the connection.
 */

#define AG_TCP_CLOSE 7 /* BPF_TCP_CLOSE */

static __always_inline void ag_flow_key_of(struct bpf_sock_ops *skops, const struct ag_origin *o,
					   struct ag_flow_key *key)
{
	key->netns_cookie = o->netns_cookie;
	key->port = (__u16)skops->local_port;
	if (skops->family == AG_AF_INET6) {
		__u32 w0 = skops->local_ip6[0], w1 = skops->local_ip6[1];
		__u32 w2 = skops->local_ip6[2], w3 = skops->local_ip6[3];

		/* A v4-mapped client is an IPv4 peer to the IPv4 listener. */
		if (w0 == 0 && w1 == 0 && w2 == bpf_htonl(0xffff)) {
			key->family = AG_AF_INET;
			__builtin_memcpy(key->addr, &w3, 4);
			return;
		}
		key->family = AG_AF_INET6;
		__builtin_memcpy(&key->addr[0], &w0, 4);
		__builtin_memcpy(&key->addr[4], &w1, 4);
		__builtin_memcpy(&key->addr[8], &w2, 4);
		__builtin_memcpy(&key->addr[12], &w3, 4);
		return;
	}
	key->family = AG_AF_INET;
	{
		__u32 a = skops->local_ip4;

		__builtin_memcpy(key->addr, &a, 4);
	}
}

SEC("sockops")
int ag_sockops(struct bpf_sock_ops *skops)
{
	struct ag_flow_key key = {};
	struct ag_origin *o;
	__u64 cookie;

	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		cookie = bpf_get_socket_cookie(skops);
		if (bpf_map_lookup_elem(&ag_origins, &cookie))
			/* Be told when it closes, whether it ever connects or not. */
			bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_STATE_CB_FLAG);
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		cookie = bpf_get_socket_cookie(skops);
		o = bpf_map_lookup_elem(&ag_origins, &cookie);
		if (!o) {
			if (bpf_ntohl(skops->remote_port) == ag_proxy_port)
				ag_count(AG_CNT_ESTABLISHED_NO_ORIGIN);
			break;
		}
		ag_flow_key_of(skops, o, &key);
		if (bpf_map_update_elem(&ag_flows, &key, o, BPF_ANY)) {
			ag_count(AG_CNT_FLOW_UPDATE_ERR);
			break;
		}
		ag_count(AG_CNT_ESTABLISHED);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] != AG_TCP_CLOSE)
			break;
		cookie = bpf_get_socket_cookie(skops);
		o = bpf_map_lookup_elem(&ag_origins, &cookie);
		if (!o)
			break;
		ag_flow_key_of(skops, o, &key);
		bpf_map_delete_elem(&ag_flows, &key);
		bpf_map_delete_elem(&ag_origins, &cookie);
		ag_count(AG_CNT_CLOSED);
		break;
	default:
		break;
	}
	return 1;
}
