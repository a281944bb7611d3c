// Device placement with llama-cli's meanings (llama.cpp common/arg.cpp): --rpc adds the devices of
// rpc-servers through ggml's RPC backend (add_rpc_devices), -dev / -devd choose the devices of the
// target and of the MTP head or sidecar (parse_device_list, common_base_params_to_speculative),
// -ts / -sm split the layers. Plain C++ (no Python); failures return false with a message.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "llama.h"

// what the user asked for
struct mtp_placement_params {
    std::vector<std::string> rpc;            // host:port of rpc-servers, registered before loading
    std::vector<std::string> devices;        // device names; {"none"}: no offload; empty: llama.cpp's choice (RPC servers first, then GPUs)
    std::vector<std::string> devices_draft;  // where the MTP head / sidecar runs; empty: follows devices
    std::vector<float>       tensor_split;   // proportion per device (in the order of the model's devices); empty: by free memory
    int32_t                  split_mode = -1; // -1: llama.cpp's default (layer); else a llama_split_mode
    int32_t                  rpc_timeout_ms = 5000; // bound on connecting to and greeting each rpc-server
};

// the resolved placement; the model parameters point into it, so it must outlive the models
struct mtp_placement {
    std::vector<ggml_backend_dev_t> devices;       // null-terminated; empty: llama.cpp's choice
    std::vector<ggml_backend_dev_t> devices_draft; // null-terminated; empty: follows devices
    std::vector<float>              tensor_split;  // llama_max_devices() entries; empty: by free memory
    int32_t                         split_mode = -1;
    std::vector<std::string>                      ot_patterns; // the embedded head's layers (-devd)
    std::vector<llama_model_tensor_buft_override> ot;          // null-terminated when not empty
    std::string                                   head_device; // the -devd device of an embedded head ("" none given)
};

// whether the loaded llama.cpp was built with GGML_RPC=ON
bool mtp_rpc_supported();

// the one line that says how to get RPC support
const char * mtp_rpc_rebuild_hint();

// check (connect, then the ggml RPC greeting, each bounded by timeout_ms) and register each
// server with ggml's RPC backend, once per process; from the first registration on, a failure of
// llama.cpp inside ggml (e.g. a connection lost mid-generation, which ggml cannot recover from)
// ends the process with one line on stderr and exit status 1 instead of an abort
bool mtp_rpc_add_servers(const std::vector<std::string> & servers, int32_t timeout_ms, std::string & err);

// register the RPC servers, resolve device names; false and err (invalid: a bad value, not a
// connection problem) on failure
bool mtp_placement_init(const mtp_placement_params & p, mtp_placement & out, std::string & err, bool & invalid);

// the target's model parameters; head_layers: the embedded MTP head will be loaded, its layers
// are [n_layer_all - n_nextn, n_layer_all) and go to the -devd device when one was given
bool mtp_placement_apply_target(mtp_placement & pl, llama_model_params & mp, int64_t n_layer_all, int64_t n_nextn,
                                bool head_layers, std::string & err);
// a sidecar drafter's model parameters (-devd, else the target's devices)
void mtp_placement_apply_draft(const mtp_placement & pl, llama_model_params & mp);

// names of the devices llama.cpp could offload to (not the CPU), comma-separated
std::string mtp_offload_device_names();

// serve this process's CPU as an rpc-server on endpoint (host:port) until killed (tests); false
// and err when it cannot start
bool mtp_rpc_serve(const std::string & endpoint, int32_t n_threads, std::string & err);
