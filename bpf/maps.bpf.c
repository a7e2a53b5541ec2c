// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The one definition of every map and rodata variable (see maps.h). */
#define AG_DEFINE_MAPS
#include "maps.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";
