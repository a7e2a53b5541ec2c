#pragma once
// C++ view of bpf/atlasgate_abi.h: the same header the BPF programs include,
// with its layout pinned so that a change on one side fails the build.

#include <linux/types.h>

#include <cstddef>

#define AG_COUNTER_NAMES
#include "atlasgate_abi.h"

static_assert(sizeof(ag_target) == 8);
static_assert(sizeof(ag_addr6) == 16);
static_assert(sizeof(ag_origin) == 72);
static_assert(offsetof(ag_origin, orig_addr) == 24);
static_assert(offsetof(ag_origin, orig_port) == 40);
static_assert(offsetof(ag_origin, pid) == 44);
static_assert(offsetof(ag_origin, comm) == 56);
static_assert(sizeof(ag_flow_key) == 32);
static_assert(offsetof(ag_flow_key, port) == 24);
static_assert(offsetof(ag_flow_key, family) == 26);
