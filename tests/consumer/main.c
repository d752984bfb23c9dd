#include <stdio.h>

#include "moe/moe.h"

int main(void) {
  int32_t major = -1, minor = -1, patch = -1;
  if (moe_version(&major, &minor, &patch) != MOE_STATUS_SUCCESS) return 1;
  printf("moe %d.%d.%d\n", (int)major, (int)minor, (int)patch);
  return major == MOE_VERSION_MAJOR ? 0 : 1;
}
