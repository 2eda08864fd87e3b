// N-API entry points: what Node cannot do itself. Arguments are validated in TypeScript
// (src/native.ts); this layer only does the system calls. libkrun never comes near this process:
// the VM helper msb-vmm loads it, in a process of its own.
//
// kvmCapabilities(device): what a KVM device can do, asked by ioctl: its API version, whether it
// creates a VM with a vCPU, its extensions, and (x86) the CPU features it offers guests. A
// /dev/kvm that opens is not always one that runs guests (no VT-x in a nested VM, a PVM host whose
// KVM offers only baseline CPUID): these facts let the backend decision and `msb doctor` say so
// up front, where otherwise only a trial boot would tell.
#include <napi.h>

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include <string>
#include <vector>

#ifdef __linux__
#include <linux/kvm.h>
#include <sys/ioctl.h>
#endif

namespace {

#ifdef __linux__
// Closes a descriptor when it goes out of scope.
struct Fd {
  int fd;
  explicit Fd(int f) : fd(f) {}
  ~Fd() {
    if (fd >= 0) close(fd);
  }
  Fd(const Fd &) = delete;
  Fd &operator=(const Fd &) = delete;
};

// Extensions worth reporting: what QEMU and libkrun rely on.
const struct {
  const char *name;
  int cap;
} kExtensions[] = {
    {"user-memory", KVM_CAP_USER_MEMORY},       {"irqchip", KVM_CAP_IRQCHIP}, {"ioeventfd", KVM_CAP_IOEVENTFD}, {"irqfd", KVM_CAP_IRQFD},
    {"immediate-exit", KVM_CAP_IMMEDIATE_EXIT},
#ifdef KVM_CAP_ARM_PSCI_0_2
    {"arm-psci-0.2", KVM_CAP_ARM_PSCI_0_2},
#endif
};

#if defined(__x86_64__) || defined(__i386__)
// CPU features guests are offered (KVM_GET_SUPPORTED_CPUID): leaf, subleaf, register, bit.
enum Reg { EBX, ECX, EDX };
const struct {
  const char *name;
  unsigned leaf, index;
  Reg reg;
  int bit;
} kFeatures[] = {
    {"sse3", 1, 0, ECX, 0},    {"ssse3", 1, 0, ECX, 9}, {"sse4.1", 1, 0, ECX, 19}, {"sse4.2", 1, 0, ECX, 20},
    {"x2apic", 1, 0, ECX, 21}, {"avx", 1, 0, ECX, 28},  {"avx2", 7, 0, EBX, 5},    {"avx512f", 7, 0, EBX, 16},
};

// The supported CPUID table, grown until it fits.
std::vector<kvm_cpuid_entry2> SupportedCpuid(int kvm) {
  for (unsigned n = 64; n <= 4096; n *= 2) {
    std::vector<unsigned char> buf(sizeof(kvm_cpuid2) + n * sizeof(kvm_cpuid_entry2));
    auto *c = reinterpret_cast<kvm_cpuid2 *>(buf.data());
    c->nent = n;
    if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, c) == 0) return std::vector<kvm_cpuid_entry2>(c->entries, c->entries + c->nent);
    if (errno != E2BIG) break;
  }
  return {};
}
#endif

// { ok, errno, detail, apiVersion, createsVm, extensions, cpuVendor, cpuFeatures }
Napi::Value KvmCapabilities(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::string device = info[0].As<Napi::String>().Utf8Value();
  Napi::Object out = Napi::Object::New(env);
  auto fail = [&](const std::string &what, int err) {
    out.Set("ok", false);
    out.Set("errno", err);
    out.Set("detail", what + ": " + strerror(err));
    return out;
  };
  Fd kvm(open(device.c_str(), O_RDWR | O_CLOEXEC));
  if (kvm.fd < 0) return fail("open(" + device + ", O_RDWR) failed", errno);
  int version = ioctl(kvm.fd, KVM_GET_API_VERSION, 0);
  if (version < 0) return fail(device + " is not a KVM device (KVM_GET_API_VERSION)", errno);
  out.Set("apiVersion", version);
  Napi::Array extensions = Napi::Array::New(env);
  for (const auto &e : kExtensions)
    if (ioctl(kvm.fd, KVM_CHECK_EXTENSION, e.cap) > 0) extensions.Set(extensions.Length(), e.name);
  out.Set("extensions", extensions);
#if defined(__x86_64__) || defined(__i386__)
  std::vector<kvm_cpuid_entry2> cpuid = SupportedCpuid(kvm.fd);
  Napi::Array features = Napi::Array::New(env);
  for (const auto &f : kFeatures) {
    for (const auto &e : cpuid) {
      if (e.function != f.leaf || e.index != f.index) continue;
      unsigned reg = f.reg == EBX ? e.ebx : f.reg == ECX ? e.ecx : e.edx;
      if (reg & (1u << f.bit)) features.Set(features.Length(), f.name);
    }
  }
  for (const auto &e : cpuid) {
    if (e.function != 0) continue;
    char vendor[13] = {0};
    memcpy(vendor, &e.ebx, 4);
    memcpy(vendor + 4, &e.edx, 4);
    memcpy(vendor + 8, &e.ecx, 4);
    out.Set("cpuVendor", vendor);
  }
  out.Set("cpuFeatures", features);
#endif
  // The proof that counts: a VM and a vCPU are made (and thrown away at once).
  Fd vm(ioctl(kvm.fd, KVM_CREATE_VM, 0));
  if (vm.fd < 0) return fail(device + " cannot create a VM (KVM_CREATE_VM)", errno);
  Fd vcpu(ioctl(vm.fd, KVM_CREATE_VCPU, 0));
  if (vcpu.fd < 0) return fail(device + " cannot create a vCPU (KVM_CREATE_VCPU)", errno);
  out.Set("ok", true);
  out.Set("errno", 0);
  out.Set("detail", device + ": KVM API " + std::to_string(version) + ", creates VMs");
  return out;
}
#else
Napi::Value KvmCapabilities(const Napi::CallbackInfo &info) {
  Napi::Object out = Napi::Object::New(info.Env());
  out.Set("ok", false);
  out.Set("errno", ENOSYS);
  out.Set("detail", "KVM is Linux's; this platform's hypervisor is its own");
  return out;
}
#endif

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("kvmCapabilities", Napi::Function::New(env, KvmCapabilities, "kvmCapabilities"));
  return exports;
}

}  // namespace

NODE_API_MODULE(microsandbox, Init)
