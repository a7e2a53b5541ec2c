#pragma once
// The console's static files (userspace/console/assets/), embedded in the
// binary at build time (cmake/embed_assets.cmake): running the console
// needs no files on disk and no Node build step.

#include <string_view>

namespace atlasgate::console {

struct Asset {
  std::string_view path;  // "/assets/app.js"
  std::string_view contentType;
  std::string_view body;
};

// nullptr when there is no such file.
const Asset* findAsset(std::string_view path);

}  // namespace atlasgate::console
