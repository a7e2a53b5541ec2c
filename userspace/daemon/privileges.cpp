#include "daemon/privileges.h"

#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <fmt/format.h>

#include <fstream>

namespace atlasgate::daemon {

namespace {

#ifndef CAP_PERFMON
#define CAP_PERFMON 38
#endif
#ifndef CAP_BPF
#define CAP_BPF 39
#endif

constexpr int kKeep[] = {CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH};

int lastCap() {
  std::ifstream in("/proc/sys/kernel/cap_last_cap");
  int n = 40;
  in >> n;
  return n;
}

bool kept(int cap) {
  for (int k : kKeep)
    if (k == cap) return true;
  return false;
}

}  // namespace

Result<void> dropCapabilities() {
  int last = lastCap();
  // The bounding set first (needs CAP_SETPCAP, which goes below).
  for (int cap = 0; cap <= last; ++cap)
    if (!kept(cap) && ::prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL)
      return sysError(errno, "drop capability {} from the bounding set", cap);
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2] = {};
  for (int cap : kKeep) {
    if (cap > last) continue;
    data[cap / 32].effective |= 1u << (cap % 32);
    data[cap / 32].permitted |= 1u << (cap % 32);
  }
  // This applies to the calling thread; the daemon calls it before it starts
  // any other thread, so every later thread inherits the reduced sets.
  if (::syscall(SYS_capset, &hdr, data) != 0) return sysError(errno, "capset");
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return sysError(errno, "PR_SET_NO_NEW_PRIVS");
  return {};
}

std::string effectiveCapabilities() {
  static const char* names[] = {"chown",
                                "dac_override",
                                "dac_read_search",
                                "fowner",
                                "fsetid",
                                "kill",
                                "setgid",
                                "setuid",
                                "setpcap",
                                "linux_immutable",
                                "net_bind_service",
                                "net_broadcast",
                                "net_admin",
                                "net_raw",
                                "ipc_lock",
                                "ipc_owner",
                                "sys_module",
                                "sys_rawio",
                                "sys_chroot",
                                "sys_ptrace",
                                "sys_pacct",
                                "sys_admin",
                                "sys_boot",
                                "sys_nice",
                                "sys_resource",
                                "sys_time",
                                "sys_tty_config",
                                "mknod",
                                "lease",
                                "audit_write",
                                "audit_control",
                                "setfcap",
                                "mac_override",
                                "mac_admin",
                                "syslog",
                                "wake_alarm",
                                "block_suspend",
                                "audit_read",
                                "perfmon",
                                "bpf",
                                "checkpoint_restore"};
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2] = {};
  if (::syscall(SYS_capget, &hdr, data) != 0) return "?";
  std::string out;
  for (int cap = 0; cap < 64; ++cap)
    if (data[cap / 32].effective & (1u << (cap % 32))) {
      if (!out.empty()) out += ",";
      out += cap < static_cast<int>(std::size(names)) ? fmt::format("cap_{}", names[cap]) : fmt::format("cap_{}", cap);
    }
  return out;
}

}  // namespace atlasgate::daemon
