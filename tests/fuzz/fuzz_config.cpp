// fuzz_config: config::parseConfig on arbitrary text (yaml-cpp underneath),
// then what the daemon does with a config that loads: describeConfig (for
// `atlasgate check`) and policy::Policy::compile of its rules.
//
// Oracles, beyond ASan/UBSan:
//  * parseConfig never throws (errors are values, "fuzz.yaml:LINE:COL: ...");
//  * a config that loads either compiles into a Policy or is refused by the
//    policy with a position in the file (rule meaning is checked there, once:
//    `atlasgate check` and the daemon both compile it).

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "config/config.h"
#include "fuzz_common.h"
#include "policy/policy.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  atlasgate::fuzz::quietLogs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  std::string_view yaml(reinterpret_cast<const char*>(data), size);
  auto c = atlasgate::config::parseConfig(yaml, "fuzz.yaml", true);
  if (!c) {
    AG_FUZZ_CHECK(c.error().message.rfind("fuzz.yaml", 0) == 0, "error without FILE:LINE:COL: " + c.error().message);
    return 0;
  }
  AG_FUZZ_CHECK(!c->targets.empty(), "a config without targets loaded");
  (void)atlasgate::config::describeConfig(c.value());
  auto p = atlasgate::policy::Policy::compile(c->rules);
  if (!p) {
    AG_FUZZ_CHECK(p.error().message.rfind("fuzz.yaml:", 0) == 0,
                  "a rule refused without its position: " + p.error().message);
    return 0;
  }
  (void)p.value()->table();
  return 0;
}
