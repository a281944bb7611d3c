// mtprun engine: the MTP speculative decoding loop on llama.cpp's public API.
#pragma once
#include <string>

// the llama.cpp build this engine was compiled against, and the one loaded at run time
std::string mtp_build_commit();
std::string mtp_runtime_commit();
