// N-API entry points. Arguments are validated in TypeScript (src/native.ts); this layer only
// does what needs C++.
#include <napi.h>

#include "probe.h"

namespace {

Napi::Object ToObject(Napi::Env env, const msb::ProbeResult& r) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("ok", Napi::Boolean::New(env, r.ok));
  o.Set("detail", Napi::String::New(env, r.detail));
  o.Set("errno", Napi::Number::New(env, r.err));
  Napi::Array symbols = Napi::Array::New(env, r.symbols.size());
  for (size_t i = 0; i < r.symbols.size(); i++) symbols.Set(i, Napi::String::New(env, r.symbols[i]));
  o.Set("symbols", symbols);
  return o;
}

// probeKvm(path: string) -> { ok, detail, errno, symbols: [] }
Napi::Value ProbeKvm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) {
    Napi::TypeError::New(env, "probeKvm(path) expects a string").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return ToObject(env, msb::ProbeKvm(info[0].As<Napi::String>()));
}

// probeLibrary(name: string, required: string, symbols: string[]) -> { ok, detail, errno, symbols }
Napi::Value ProbeLibrary(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsString() || !info[1].IsString() || !info[2].IsArray()) {
    Napi::TypeError::New(env, "probeLibrary(name, required, symbols) expects two strings and an array")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Array list = info[2].As<Napi::Array>();
  std::vector<std::string> symbols;
  for (uint32_t i = 0; i < list.Length(); i++) {
    Napi::Value v = list.Get(i);
    if (v.IsString()) symbols.push_back(v.As<Napi::String>());
  }
  return ToObject(env, msb::ProbeLibrary(info[0].As<Napi::String>(), info[1].As<Napi::String>(), symbols));
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("probeKvm", Napi::Function::New(env, ProbeKvm, "probeKvm"));
  exports.Set("probeLibrary", Napi::Function::New(env, ProbeLibrary, "probeLibrary"));
  return exports;
}

}  // namespace

NODE_API_MODULE(microsandbox, Init)
