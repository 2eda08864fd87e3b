// msb-floor-init, the boot benchmark's floor: a trivial /init that prints a marker on the console
// and powers off.
// Booted by the same kernel with the same devices as a sandbox, it shows what the kernel and the
// VMM cost before any of our code runs.
#include <sys/reboot.h>
#include <unistd.h>

int main(void) {
  static const char marker[] = "MSB-FLOOR-MARKER\n";
  if (write(1, marker, sizeof marker - 1) < 0) return 1;
  reboot(RB_POWER_OFF);
  return 0;
}
