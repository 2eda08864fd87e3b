// Host capability probes: can this process open /dev/kvm, can it load libkrun.
#pragma once
#include <string>

namespace msb {

struct ProbeResult {
  bool ok = false;
  std::string detail;  // on success: what was found; on failure: why not
  int err = 0;         // errno of the failing call, 0 when not a syscall failure
};

// Opens /dev/kvm read-write (what libkrun needs) and closes it again.
ProbeResult ProbeKvm(const std::string& path);

// dlopen()s libkrun by name or path and checks that krun_create_ctx resolves.
// The library is closed again: loading it for real happens only in the per-VM helper.
ProbeResult ProbeLibkrun(const std::string& name);

}  // namespace msb
