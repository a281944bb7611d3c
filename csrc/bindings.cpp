#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include "engine.h"

namespace nb = nanobind;

NB_MODULE(_core, m) {
    m.doc() = "mtprun native engine";
    m.def("build_commit", &mtp_build_commit);
    m.def("runtime_commit", &mtp_runtime_commit);
    m.def("build_llama_cpp_python_version", []() { return std::string(MTPRUN_LLAMA_CPP_PYTHON_VERSION); });
}
