// The one binding file: exposes the engine (engine.h) to Python as mtprun._core.
// The GIL is released while llama.cpp computes; Python is crossed once per speculative step.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include "engine.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

// raised as mtprun._core.CoreError(status, message); the Python facade maps status to mtprun.errors
struct core_error {
    int         status;
    std::string message;
};

nb::handle g_core_error_type;

[[noreturn]] void raise(mtp_status status, const std::string & message) {
    throw core_error{ (int) status, message };
}

nb::list memory_list(const std::vector<mtp_memory_entry> & entries); // defined at the end of this file

class Engine {
public:
    Engine(const std::string & path, const std::string & draft_path, int32_t n_ctx, int32_t n_batch, int32_t n_threads,
           int32_t n_gpu_layers, int32_t flash_attn, bool use_mtp, int32_t n_draft_capacity, bool verbose,
           const mtp_placement_params & placement) {
        mtp_model_params p;
        p.placement        = placement;
        p.path             = path;
        p.draft_path       = draft_path;
        p.n_ctx            = n_ctx;
        p.n_batch          = n_batch;
        p.n_threads        = n_threads;
        p.n_gpu_layers     = n_gpu_layers;
        p.flash_attn       = flash_attn;
        p.use_mtp          = use_mtp;
        p.n_draft_capacity = n_draft_capacity;
        std::string err;
        mtp_status status = MTP_OK;
        {
            nb::gil_scoped_release release;
            mtp_set_verbose(verbose);
            eng_ = mtp_engine_init(p, err, &status);
        }
        if (!eng_) {
            raise(status, err);
        }
    }

    ~Engine() { close(); }

    void close() {
        if (eng_) {
            mtp_engine_free(eng_);
            eng_ = nullptr;
        }
    }

    bool closed() const { return eng_ == nullptr; }

    nb::dict info() const {
        const mtp_model_info & i = mtp_engine_info(get());
        nb::dict d;
        d["arch"] = i.arch;
        d["description"] = i.description;
        d["size_bytes"] = i.size_bytes;
        d["n_params"] = i.n_params;
        d["n_vocab"] = i.n_vocab;
        d["n_ctx"] = i.n_ctx;
        d["n_ctx_train"] = i.n_ctx_train;
        d["n_layer"] = i.n_layer;
        d["n_embd"] = i.n_embd;
        d["n_layer_nextn"] = i.n_layer_nextn;
        d["mtp_kind"] = i.mtp_kind == MTP_KIND_EMBEDDED ? "embedded" : i.mtp_kind == MTP_KIND_SIDECAR ? "sidecar" : "none";
        d["mtp_active"] = i.mtp_active;
        d["mtp_note"] = i.mtp_note;
        d["recurrent"] = i.recurrent;
        d["mtp_chain"] = i.mtp_chain;
        d["chat_template"] = nb::bytes(i.chat_template.data(), i.chat_template.size());
        d["bos_token"] = nb::bytes(i.bos_token.data(), i.bos_token.size());
        d["eos_token"] = nb::bytes(i.eos_token.data(), i.eos_token.size());
        d["add_bos"] = i.add_bos;
        d["backend"] = i.backend;
        d["system_info"] = i.system_info;
        d["memory"] = memory_list(i.memory);
        return d;
    }

    std::vector<llama_token> tokenize(const nb::bytes & text, bool add_special, bool parse_special) const {
        std::string s(text.c_str(), text.size());
        std::vector<llama_token> out;
        std::string err;
        mtp_status st;
        {
            nb::gil_scoped_release release;
            st = mtp_tokenize(get(), s, add_special, parse_special, out, err);
        }
        if (st != MTP_OK) {
            raise(st, err);
        }
        return out;
    }

    nb::bytes token_piece(llama_token token) const {
        const std::string s = mtp_token_piece(get(), token);
        return nb::bytes(s.data(), s.size());
    }

    nb::bytes detokenize(const std::vector<llama_token> & tokens) const {
        const std::string s = mtp_detokenize(get(), tokens);
        return nb::bytes(s.data(), s.size());
    }

    void begin(const std::vector<llama_token> & prompt, const mtp_gen_params & params) {
        std::string err;
        mtp_status st;
        mtp_engine * e = get();
        {
            nb::gil_scoped_release release;
            st = mtp_begin(e, prompt, params, err);
        }
        if (st != MTP_OK) {
            raise(st, err);
        }
    }

    // one step: (tokens, pieces, from_draft, n_drafted, n_accepted, stop); pieces are the tokens'
    // bytes, so Python is crossed once per step, not per token
    std::tuple<std::vector<llama_token>, nb::list, std::vector<bool>, int32_t, int32_t, int32_t> step() {
        std::string err;
        mtp_status st;
        mtp_engine * e = get();
        {
            nb::gil_scoped_release release;
            st = mtp_step(e, res_, err);
            pieces_.clear();
            for (llama_token t : res_.tokens) {
                pieces_.push_back(mtp_token_piece(e, t));
            }
        }
        if (st != MTP_OK) {
            raise(st, err);
        }
        nb::list pieces;
        for (const std::string & p : pieces_) {
            pieces.append(nb::bytes(p.data(), p.size()));
        }
        std::vector<bool> from_draft(res_.from_draft.begin(), res_.from_draft.end());
        return { res_.tokens, pieces, from_draft, res_.n_drafted, res_.n_accepted, res_.stop };
    }

    mtp_stats stats() { return mtp_get_stats(get()); }

    std::vector<float> next_logits() {
        std::vector<float> out;
        std::string err;
        mtp_status st;
        mtp_engine * e = get();
        {
            nb::gil_scoped_release release;
            st = mtp_next_logits(e, out, err);
        }
        if (st != MTP_OK) {
            raise(st, err);
        }
        return out;
    }

    void cancel() {
        if (eng_) {
            mtp_cancel(eng_);
        }
    }

    void pin_policy_costs(const std::vector<double> & t_target, double t_head) {
        std::string err;
        const mtp_status st = mtp_pin_policy_costs(get(), t_target, t_head, err);
        if (st != MTP_OK) {
            raise(st, err);
        }
    }

    void reset() {
        mtp_engine * e = get();
        nb::gil_scoped_release release;
        mtp_reset(e);
    }

private:
    mtp_engine * get() const {
        if (!eng_) {
            raise(MTP_ERR_STATE, "the engine is closed");
        }
        return eng_;
    }

    mtp_engine *             eng_ = nullptr;
    mtp_step_result          res_;
    std::vector<std::string> pieces_;
};

} // namespace

NB_MODULE(_core, m) {
    m.doc() = "mtprun native engine: MTP speculative decoding on llama.cpp (use mtprun.engine.Engine)";

    m.attr("STATUS_INVALID") = (int) MTP_ERR_INVALID;
    m.attr("STATUS_MODEL")   = (int) MTP_ERR_MODEL;
    m.attr("STATUS_CONTEXT") = (int) MTP_ERR_CONTEXT;
    m.attr("STATUS_RUNTIME") = (int) MTP_ERR_RUNTIME;
    m.attr("STATUS_STATE")   = (int) MTP_ERR_STATE;
    m.attr("STATUS_DEVICE")  = (int) MTP_ERR_DEVICE;
    m.attr("STOP_NONE")      = (int) MTP_STOP_NONE;
    m.attr("STOP_EOS")       = (int) MTP_STOP_EOS;
    m.attr("STOP_LENGTH")    = (int) MTP_STOP_LENGTH;
    m.attr("STOP_CONTEXT")   = (int) MTP_STOP_CONTEXT;
    m.attr("STOP_CANCELLED") = (int) MTP_STOP_CANCELLED;

    g_core_error_type = PyErr_NewExceptionWithDoc("mtprun._core.CoreError",
        "An engine failure: args are (status, message); status is one of the STATUS_* constants.",
        PyExc_RuntimeError, nullptr);
    m.attr("CoreError") = g_core_error_type;
    nb::register_exception_translator([](const std::exception_ptr & p, void *) {
        try {
            std::rethrow_exception(p);
        } catch (const core_error & e) {
            nb::object exc = nb::borrow(g_core_error_type)(e.status, e.message);
            PyErr_SetObject(g_core_error_type.ptr(), exc.ptr());
        }
    });

    m.def("build_commit", &mtp_build_commit, "The llama.cpp commit the extension was compiled against.");
    m.def("runtime_commit", &mtp_runtime_commit, "The llama.cpp commit of the loaded libggml.");
    m.def("build_llama_cpp_python_version", []() { return std::string(MTPRUN_LLAMA_CPP_PYTHON_VERSION); },
          "The llama-cpp-python version the extension was compiled against.");
    m.def("set_verbose", &mtp_set_verbose, "verbose"_a, "Let llama.cpp's own log through to stderr.");

    m.def("choose_draft_length", &mtp_choose_draft_length, "t_target"_a, "t_head"_a, "acceptance"_a, "n_max"_a,
          "The draft-length policy's choice: the n in 0..n_max maximising expected tokens per second, where "
          "t_target[k-1] is the cost of a target pass over k tokens, t_head of one MTP-head decode and "
          "acceptance[j-1] the acceptance of draft position j given the previous ones.");

    nb::class_<mtp_sampling_params>(m, "SamplingParams", "Token selection of one generation (engine.h mtp_sampling_params).")
        .def(nb::init<>())
        .def_rw("temp", &mtp_sampling_params::temp)
        .def_rw("top_k", &mtp_sampling_params::top_k)
        .def_rw("top_p", &mtp_sampling_params::top_p)
        .def_rw("min_p", &mtp_sampling_params::min_p)
        .def_rw("repeat_penalty", &mtp_sampling_params::repeat_penalty)
        .def_rw("repeat_last_n", &mtp_sampling_params::repeat_last_n)
        .def_rw("presence_penalty", &mtp_sampling_params::presence_penalty)
        .def_rw("seed", &mtp_sampling_params::seed);

    nb::class_<mtp_gen_params>(m, "GenParams", "One generation's settings (engine.h mtp_gen_params).")
        .def(nb::init<>())
        .def_rw("max_tokens", &mtp_gen_params::max_tokens)
        .def_rw("speculate", &mtp_gen_params::speculate)
        .def_rw("n_max", &mtp_gen_params::n_max)
        .def_rw("adaptive", &mtp_gen_params::adaptive)
        .def_rw("p_min", &mtp_gen_params::p_min)
        .def_rw("sampling", &mtp_gen_params::sampling);

    nb::class_<mtp_stats>(m, "Stats", "Statistics of a generation (engine.h mtp_stats), with the draft-length policy's estimates.")
        .def_ro("n_prompt", &mtp_stats::n_prompt)
        .def_ro("n_prompt_reused", &mtp_stats::n_prompt_reused)
        .def_ro("t_prompt_s", &mtp_stats::t_prompt_s)
        .def_ro("n_generated", &mtp_stats::n_generated)
        .def_ro("t_gen_s", &mtp_stats::t_gen_s)
        .def_ro("n_drafted", &mtp_stats::n_drafted)
        .def_ro("n_accepted", &mtp_stats::n_accepted)
        .def_ro("drafted_at", &mtp_stats::drafted_at)
        .def_ro("accepted_at", &mtp_stats::accepted_at)
        .def_ro("n_target_passes", &mtp_stats::n_target_passes)
        .def_ro("t_draft_s", &mtp_stats::t_draft_s)
        .def_ro("t_verify_s", &mtp_stats::t_verify_s)
        .def_ro("t_sample_s", &mtp_stats::t_sample_s)
        .def_ro("speculative", &mtp_stats::speculative)
        .def_ro("adaptive", &mtp_stats::adaptive)
        .def_ro("n_max", &mtp_stats::n_max)
        .def_ro("steps_by_n", &mtp_stats::steps_by_n)
        .def_ro("est_acceptance", &mtp_stats::est_acceptance)
        .def_ro("est_t_target", &mtp_stats::est_t_target)
        .def_ro("est_t_head", &mtp_stats::est_t_head);

    nb::class_<mtp_placement_params>(m, "PlacementParams",
        "Where the model runs (devices.h mtp_placement_params): --rpc servers, -dev, -devd, -ts, -sm.")
        .def(nb::init<>())
        .def_rw("rpc", &mtp_placement_params::rpc)
        .def_rw("devices", &mtp_placement_params::devices)
        .def_rw("devices_draft", &mtp_placement_params::devices_draft)
        .def_rw("tensor_split", &mtp_placement_params::tensor_split)
        .def_rw("split_mode", &mtp_placement_params::split_mode)
        .def_rw("rpc_timeout_ms", &mtp_placement_params::rpc_timeout_ms);

    m.def("rpc_supported", &mtp_rpc_supported, "Whether the loaded llama.cpp was built with GGML_RPC=ON.");
    m.def("rpc_rebuild_hint", []() { return std::string(mtp_rpc_rebuild_hint()); },
          "The one line that says how to rebuild llama-cpp-python with RPC support.");
    m.def("max_devices", []() { return (int32_t) llama_max_devices(); }, "llama.cpp's llama_max_devices().");
    m.def("rpc_serve", [](const std::string & endpoint, int32_t n_threads) {
        std::string err;
        {
            nb::gil_scoped_release release;
            mtp_rpc_serve(endpoint, n_threads, err);
        }
        raise(MTP_ERR_DEVICE, err);
    }, "endpoint"_a, "n_threads"_a,
    "Serve this process's CPU as a ggml rpc-server on HOST:PORT until the process is killed (for tests); "
    "raises CoreError when it cannot.");

    nb::class_<Engine>(m, "Engine", "A loaded target (+ MTP head) with its contexts and the speculative loop.")
        .def(nb::init<const std::string &, const std::string &, int32_t, int32_t, int32_t, int32_t, int32_t, bool, int32_t, bool,
                      const mtp_placement_params &>(),
             "path"_a, "draft_path"_a, "n_ctx"_a, "n_batch"_a, "n_threads"_a, "n_gpu_layers"_a, "flash_attn"_a,
             "use_mtp"_a, "n_draft_capacity"_a, "verbose"_a, "placement"_a = mtp_placement_params(),
             "Load the model(s) and create the contexts; raises CoreError(status, message).")
        .def("close", &Engine::close, "Free the model(s) and contexts.")
        .def_prop_ro("closed", &Engine::closed)
        .def("info", &Engine::info, "What the model offers and how it was loaded.")
        .def("tokenize", &Engine::tokenize, "text"_a, "add_special"_a, "parse_special"_a, "UTF-8 bytes to token ids.")
        .def("token_piece", &Engine::token_piece, "token"_a, "The bytes of one token (special tokens rendered).")
        .def("detokenize", &Engine::detokenize, "tokens"_a, "The bytes of a token sequence.")
        .def("begin", &Engine::begin, "prompt"_a, "params"_a,
             "Start a generation: reuse the cached prefix and process the rest of the prompt.")
        .def("step", &Engine::step,
             "One speculative step: returns (tokens, pieces, from_draft, n_drafted, n_accepted, stop); stop != STOP_NONE ends it.")
        .def("stats", &Engine::stats, "Statistics of the current or last generation.")
        .def("next_logits", &Engine::next_logits,
             "The target's logits for the token after the finished conversation (for tests; state is kept).")
        .def("cancel", &Engine::cancel, "Make the running generation stop at the next step (thread-safe).")
        .def("reset", &Engine::reset, "Forget the cached conversation.")
        .def("pin_policy_costs", &Engine::pin_policy_costs, "t_target"_a, "t_head"_a,
             "Fix the draft-length policy's costs (t_target[k-1]: a target pass over k tokens; t_head: one "
             "head decode; any unit) instead of measuring them: its choices then follow acceptance alone "
             "(for tests). Raises CoreError(status, message).");

    m.def("devices", []() {
        nb::list out;
        for (const mtp_device_memory & d : mtp_memory_devices()) {
            nb::dict x;
            x["name"] = d.name;
            x["description"] = d.description;
            x["type"] = d.type;
            x["free"] = d.free;
            x["total"] = d.total;
            out.append(x);
        }
        return out;
    }, "The backend devices (name, description, type: cpu/gpu/igpu/accel) with free and total memory in bytes.");
    m.def("memory_dry_run", [](const std::string & path, const std::string & draft_path, int32_t n_ctx, int32_t n_batch,
                               int32_t n_gpu_layers, int32_t flash_attn, bool use_mtp, int32_t n_draft_capacity,
                               const mtp_placement_params & placement) {
        mtp_model_params p;
        p.placement = placement;
        p.path = path;
        p.draft_path = draft_path;
        p.n_ctx = n_ctx;
        p.n_batch = n_batch;
        p.n_gpu_layers = n_gpu_layers;
        p.flash_attn = flash_attn;
        p.use_mtp = use_mtp;
        p.n_draft_capacity = n_draft_capacity;
        std::vector<mtp_memory_entry> entries;
        std::string err;
        bool ok;
        {
            nb::gil_scoped_release release;
            ok = mtp_memory_dry_run(p, entries, err);
        }
        if (!ok) {
            raise(MTP_ERR_MODEL, err);
        }
        return memory_list(entries);
    }, "path"_a, "draft_path"_a, "n_ctx"_a, "n_batch"_a, "n_gpu_layers"_a, "flash_attn"_a, "use_mtp"_a, "n_draft_capacity"_a,
    "placement"_a = mtp_placement_params(),
    "What the engine's contexts would allocate (llama.cpp's breakdown rows), from llama.cpp's no_alloc dry "
    "run: no weights are read. Raises CoreError(status, message).");
    m.def("context_memory", [](uintptr_t ctx) {
        std::vector<mtp_memory_entry> entries;
        mtp_memory_collect(reinterpret_cast<const llama_context *>(ctx), "other", false, entries);
        return memory_list(entries);
    }, "address"_a,
    "llama.cpp's memory breakdown of a llama_context created elsewhere in this process through the same "
    "libllama (e.g. llama-cpp-python's), given its address; for checking mtprun against llama.cpp's defaults.");
}

namespace {

// llama.cpp's memory breakdown of an engine's contexts, one dict per (context, buffer type)
nb::list memory_list(const std::vector<mtp_memory_entry> & entries) {
    nb::list out;
    for (const mtp_memory_entry & m : entries) {
        nb::dict x;
        x["context"] = m.context;
        x["buffer"] = m.buffer;
        x["device"] = m.device;
        x["device_description"] = m.device_description;
        x["host"] = m.host;
        x["shared_model"] = m.shared_model;
        x["model"] = m.model;
        x["state"] = m.state;
        x["compute"] = m.compute;
        out.append(x);
    }
    return out;
}

} // namespace
