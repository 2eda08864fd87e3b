{
  # The N-API addon. What must not run inside Node (the VMM) lives in separate helper
  # executables added next to it; the guest agent is built by native/agent/Makefile with musl.
  "targets": [
    {
      "target_name": "microsandbox",
      "sources": ["native/addon/addon.cc", "native/addon/probe.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_CPP_EXCEPTIONS"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra"],
      "xcode_settings": {
        "CLANG_CXX_LANGUAGE_STANDARD": "c++17",
        "MACOSX_DEPLOYMENT_TARGET": "11.0"
      },
      "conditions": [
        ["OS=='linux'", {"libraries": ["-ldl"]}]
      ]
    },
    {
      "target_name": "msb-vmm",
      "type": "executable",
      "sources": ["native/vmm/vmm.c"],
      "cflags": ["-std=c11", "-Wall", "-Wextra"]
    }
  ]
}
