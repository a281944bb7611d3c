#include "engine.h"
#include "llama.h"

std::string mtp_build_commit() { return MTPRUN_GGML_COMMIT; }
std::string mtp_runtime_commit() { return ggml_commit(); }
