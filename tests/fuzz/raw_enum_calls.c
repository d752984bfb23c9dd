/* The fuzz target's calls that pass enums by value, written in C: a C caller may pass
 * any int where moe.h takes an enum (the library checks the raw value), while in C++
 * merely forming such an out-of-range enum value is undefined behaviour that UBSan
 * would report against the harness itself. */
#include "moe/moe.h"

moe_status_t fuzz_layer_metric(const_moe_layer_t layer, int split, int scope, const char* name,
                               double* values, int64_t capacity, int64_t* count) {
  return moe_layer_metric(layer, (moe_split_t)split, (moe_scope_t)scope, name, values, capacity,
                          count);
}

moe_status_t fuzz_layer_export(const_moe_layer_t layer, int format, int split, int scope,
                               char* buffer, size_t capacity, size_t* length) {
  return moe_layer_telemetry_export(layer, (moe_export_format_t)format, (moe_split_t)split,
                                    (moe_scope_t)scope, buffer, capacity, length);
}

moe_status_t fuzz_group_export(moe_group_t group, int format, int split, int scope, char* buffer,
                               size_t capacity, size_t* length) {
  return moe_group_telemetry_export(group, (moe_export_format_t)format, (moe_split_t)split,
                                    (moe_scope_t)scope, buffer, capacity, length);
}

moe_status_t fuzz_layer_verdicts(const_moe_layer_t layer, int split, int scope,
                                 moe_verdicts_t* verdicts) {
  return moe_layer_verdicts(layer, (moe_split_t)split, (moe_scope_t)scope, verdicts);
}
