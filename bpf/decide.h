/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The connect-time decision, free of BPF helpers so that it compiles for the
 * host too (tests/bpf/decide_test.cpp). The SEC() entry points gather the
 * facts, call ag_decide() and turn its verdict into the kernel's return code.
 */
#ifndef ATLASGATE_DECIDE_H
#define ATLASGATE_DECIDE_H

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

#define AG_SOCK_STREAM 1
#define AG_SOCK_DGRAM 2
#define AG_HTTPS_PORT 443

enum ag_verdict {
	AG_PASS = 0, /* leave the connection alone */
	AG_REDIRECT = 1, /* rewrite to the local terminator, record the origin */
	AG_REFUSE = 2, /* fail the connect() with EPERM */
};

struct ag_conn_facts {
	__u32 sock_type; /* SOCK_STREAM, SOCK_DGRAM, ... */
	__u16 dport; /* destination port, host order */
	__u8 is_target; /* destination found in the targets map */
	__u8 refuse_quic; /* rodata switch: refuse UDP/443 to targets */
	__u8 intercept_all; /* rodata switch: redirect every TCP/443 (intercept: all-tls) */
	__u16 mongo_port; /* rodata: a mongodb target's port (27017); 0 = none */
};

/* Returns the verdict and sets *counter to the ag_counter that explains it. */
static __always_inline int ag_decide(const struct ag_conn_facts *f, __u32 *counter)
{
	/* No exemption by pid: the verdict is acted on for members only, and
	 * the daemon is never one (its cgroup cannot be attached); a pid
	 * outlives nothing: after the daemon exits, an agent could get its. */
	/* A mongodb target is a name pattern (*.mongodb.net), so no address
	 * map can say which connections are its: every TCP connection to its
	 * port is redirected and the ClientHello's name decides; the rest is
	 * spliced through untouched. */
	if (f->mongo_port != 0 && f->dport == f->mongo_port && f->sock_type == AG_SOCK_STREAM) {
		*counter = AG_CNT_REDIRECTED_MONGO;
		return AG_REDIRECT;
	}
	if (f->dport != AG_HTTPS_PORT) {
		*counter = AG_CNT_SKIP_PORT;
		return AG_PASS;
	}
	if (f->sock_type != AG_SOCK_STREAM) {
		/*
		 * QUIC to a target would go around the terminator; refusing it
		 * makes HTTP/3 clients fall back to TCP at once rather than
		 * time out.
		 */
		if (f->sock_type == AG_SOCK_DGRAM && f->is_target && f->refuse_quic) {
			*counter = AG_CNT_UDP_REFUSED;
			return AG_REFUSE;
		}
		*counter = AG_CNT_SKIP_NOT_TCP;
		return AG_PASS;
	}
	if (!f->is_target) {
		/* all-tls: the terminator peeks at the SNI and splices the
		 * connection through untouched unless it names a target. */
		if (f->intercept_all) {
			*counter = AG_CNT_REDIRECTED_ANY;
			return AG_REDIRECT;
		}
		*counter = AG_CNT_SKIP_NOT_TARGET;
		return AG_PASS;
	}
	return AG_REDIRECT;
}

#endif /* ATLASGATE_DECIDE_H */
