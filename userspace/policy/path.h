#pragma once
// Request-target normalisation and rule path patterns.
//
// Rules match *normalised* paths, never the raw request-target, so that an
// agent cannot step around a rule by spelling the same resource differently:
//
//   * the query string (and a stray fragment) is ignored;
//   * the path is split on '/', every segment is percent-decoded once
//     (`%44ELETE` is `DELETE`, `%2E%2E` is `..`); an invalid escape or an
//     encoded NUL makes the whole request malformed (the proxy answers 400);
//   * "." segments are dropped, ".." removes the previous segment, and a ".."
//     that would climb above the root makes the request malformed;
//   * empty segments are collapsed, so "//" and a trailing '/' do not matter.
//
// Encoded slashes. Atlas treats "%2F" inside a segment as data: its IP access
// list API *requires* `10.0.0.0%2F24` as one `{entryValue}` segment. A proxy,
// load balancer or servlet container in front of a server may instead decode
// it into a separator, and servlet containers also drop ";params" from a
// segment (`Cluster0;x` is `Cluster0`, `..;` is `..`). So when a segment
// decodes to something containing '/', or carries a raw ';', the target has
// two views:
//
//   primary   - each decoded segment kept whole (what Atlas does);
//   alternate - decoded segments re-split on '/' and ";params" dropped.
//
// The policy evaluates both and the more restrictive outcome wins (see
// policy.h). A "." or ".." that only appears in the alternate view (hidden
// behind "%2F" or a ";param") has no legitimate use and makes the request
// malformed.
//
// Literal pattern segments compare ASCII case-insensitively: an upstream that
// folds case must not let `/API/...` dodge a block; over-matching an allow
// rule on a path Atlas does not serve is harmless.

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace atlasgate::policy {

struct NormalizedTarget {
  std::vector<std::string> segments;                  // primary view
  std::optional<std::vector<std::string>> alternate;  // only when it differs
};

// Errors carry a one-line reason suitable for a 400 answer and the audit log.
Result<NormalizedTarget> normalizeTarget(std::string_view target);

// The primary view only (same checks as normalizeTarget).
Result<std::vector<std::string>> normalizePath(std::string_view target);

// "/a/b" for display; '%', '/', '?', '#', controls, spaces and non-ASCII bytes
// inside a segment are percent-encoded: one unambiguous line that normalises
// back to the same segments.
std::string displayPath(const std::vector<std::string>& segments);

// A compiled path pattern: literal segments, `{name}` or `*` (exactly one
// segment), `**` (zero or more segments). An empty pattern means any path.
struct PatternSegment {
  enum class Kind { Literal, One, Any };
  Kind kind = Kind::Literal;
  std::string text;  // Literal: decoded and lower-cased; One: the `{name}` or "*"
};

Result<std::vector<PatternSegment>> parsePattern(std::string_view pattern);

// Direct matcher (the reference for PathIndex; used by explain()).
// O(segments x pattern length) in the worst case.
bool matchPattern(const std::vector<PatternSegment>& pattern, const std::vector<std::string>& segments);

bool asciiIEquals(std::string_view a, std::string_view b);
std::string asciiLower(std::string_view s);
std::string asciiUpper(std::string_view s);

}  // namespace atlasgate::policy
