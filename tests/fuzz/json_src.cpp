// Boost.JSON compiled into the fuzzers (instead of linking the system's
// uninstrumented libboost_json), so the JSON parser that reads token
// responses and rule-condition bodies is instrumented and covered too.
#include <boost/json/src.hpp>
