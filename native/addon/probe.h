// Host capability probes: can this process open /dev/kvm, can it load a library (libkrun,
// libkrunfw) and which of its entry points exist.
#pragma once
#include <string>
#include <vector>

namespace msb {

struct ProbeResult {
  bool ok = false;
  std::string detail;  // on success: what was found; on failure: why not
  int err = 0;         // errno of the failing call, 0 when not a syscall failure
  std::vector<std::string> symbols;  // the asked-for symbols the library exports
};

// Opens `path` read-write (what libkrun needs of /dev/kvm) and closes it again.
ProbeResult ProbeKvm(const std::string& path);

// dlopen()s a library by name or path; ok when `required` (if not empty) resolves. Lists which of
// `symbols` resolve. The library is closed again: loading it for real happens in the VM helper.
ProbeResult ProbeLibrary(const std::string& name, const std::string& required, const std::vector<std::string>& symbols);

}  // namespace msb
