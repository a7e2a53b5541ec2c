#pragma once
// After start-up the daemon gives up every capability it no longer needs.

#include <string>

#include "common/result.h"

namespace atlasgate::daemon {

// Keeps, in the effective and permitted sets:
//   CAP_BPF, CAP_PERFMON   BPF map and link operations (attach/detach at run time)
//   CAP_NET_ADMIN          attaching cgroup socket programs
//   CAP_SYS_ADMIN          setns() into agents' network namespaces, bpffs pinning, older kernels' BPF
//   CAP_SYS_PTRACE         reading /proc/<pid>/ns/net of agents running as other users
//   CAP_DAC_READ_SEARCH    reading secret and config files on reload, walking cgroup trees
// and drops everything else, from the bounding set too, with no_new_privs.
Result<void> dropCapabilities();

// "cap_bpf,cap_net_admin,…" of the calling thread's effective set, for logs and tests.
std::string effectiveCapabilities();

}  // namespace atlasgate::daemon
