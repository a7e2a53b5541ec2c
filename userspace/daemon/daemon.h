#pragma once
// `atlasgate daemon`: loads the config, loads and attaches the BPF programs,
// serves agents, answers the control socket; SIGHUP reloads, SIGTERM drains.

#include <string>

namespace atlasgate::daemon {

struct Options {
  std::string configPath;
  std::string runDir = "/run/atlasgate";  // control.sock, runtime.json
};

// Returns the process exit code.
int run(const Options& options);

}  // namespace atlasgate::daemon
