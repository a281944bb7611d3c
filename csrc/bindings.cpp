// The one binding file: exposes the engine (engine.h) to Python as mtprun._core.
// The GIL is released while llama.cpp computes; Python is crossed once per speculative step.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <chrono>
#include <thread>

#include "engine.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

// raised as mtprun._core.CoreError(status, message); the Python facade maps status to mtprun.errors
struct core_error {
    mtp_status  status;
    std::string message;
};

nb::handle g_core_error_type;

bool py_finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
    return Py_IsFinalizing();
#else
    return _Py_IsFinalizing();
#endif
}

[[noreturn]] void raise(mtp_status status, const std::string & message) {
    throw core_error{ status, message };
}

void check(mtp_status status, const std::string & err) {
    if (status != MTP_OK) {
        raise(status, err);
    }
}

// text the model files carry (chat template, special tokens) need not be valid UTF-8
nb::str lenient_str(const std::string & s) {
    return nb::steal<nb::str>(PyUnicode_DecodeUTF8(s.data(), (Py_ssize_t) s.size(), "replace"));
}

nb::bytes as_bytes(const std::string & s) {
    return nb::bytes(s.data(), s.size());
}

// The engine with its lifetime guarded: native calls run with the GIL released, possibly in a
// worker thread (Python's prefill runs in one so that Ctrl-C stays responsive), so close()
// cancels what runs and frees the engine only once no call is inside it. eng_ and users_
// change only while the GIL is held.
class Engine {
public:
    explicit Engine(const mtp_model_params & params) {
        std::string err;
        mtp_status status = MTP_OK;
        {
            nb::gil_scoped_release release;
            eng_ = mtp_engine_init(params, err, &status);
        }
        if (!eng_) {
            raise(status, err);
        }
    }

    ~Engine() { close(); }

    void close() {
        mtp_engine * e = eng_;
        if (!e) {
            return;
        }
        eng_ = nullptr; // new calls see a closed engine
        mtp_cancel(e);  // running ones stop at their next step boundary
        while (users_ > 0) {
            if (py_finalizing()) {
                return; // a thread stuck inside at exit: leak the engine rather than free it under it
            }
            nb::gil_scoped_release release;
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        nb::gil_scoped_release release;
        mtp_engine_free(e);
    }

    bool closed() const { return eng_ == nullptr; }

    mtp_model_info info() const { return mtp_engine_info(get()); }

    std::vector<llama_token> tokenize(const nb::bytes & text, bool add_special, bool parse_special) {
        const std::string s(text.c_str(), text.size());
        std::vector<llama_token> out;
        std::string err;
        check(call([&](mtp_engine * e) { return mtp_tokenize(e, s, add_special, parse_special, out, err); }), err);
        return out;
    }

    nb::bytes token_piece(llama_token token) const { return as_bytes(mtp_token_piece(get(), token)); }

    nb::bytes detokenize(const std::vector<llama_token> & tokens) const { return as_bytes(mtp_detokenize(get(), tokens)); }

    void begin(const std::vector<llama_token> & prompt, const mtp_gen_params & params) {
        std::string err;
        check(call([&](mtp_engine * e) { return mtp_begin(e, prompt, params, err); }), err);
    }

    // one step: (tokens, pieces, from_draft, n_drafted, n_accepted, stop); pieces are the tokens'
    // bytes, so Python is crossed once per step, not per token
    std::tuple<std::vector<llama_token>, nb::list, std::vector<bool>, int32_t, int32_t, mtp_stop> step() {
        std::string err;
        check(call([&](mtp_engine * e) {
            const mtp_status st = mtp_step(e, res_, err);
            pieces_.clear();
            for (llama_token t : res_.tokens) {
                pieces_.push_back(mtp_token_piece(e, t));
            }
            return st;
        }), err);
        nb::list pieces;
        for (const std::string & p : pieces_) {
            pieces.append(as_bytes(p));
        }
        std::vector<bool> from_draft(res_.from_draft.begin(), res_.from_draft.end());
        return { res_.tokens, pieces, from_draft, res_.n_drafted, res_.n_accepted, res_.stop };
    }

    mtp_stats stats() { return mtp_get_stats(get()); }

    std::vector<float> next_logits() {
        std::vector<float> out;
        std::string err;
        check(call([&](mtp_engine * e) { return mtp_next_logits(e, out, err); }), err);
        return out;
    }

    void cancel() {
        if (eng_) {
            mtp_cancel(eng_);
        }
    }

    void set_policy_costs(const std::vector<double> & t_target, double t_head, bool pin) {
        std::string err;
        check(mtp_set_policy_costs(get(), t_target, t_head, pin, err), err);
    }

    void reset() {
        call([](mtp_engine * e) { mtp_reset(e); return MTP_OK; });
    }

private:
    mtp_engine * get() const {
        if (!eng_) {
            raise(MTP_ERR_STATE, "the engine is closed");
        }
        return eng_;
    }

    // f(engine) with the GIL released, counted as a user so that close() waits for it
    template <class F> mtp_status call(F && f) {
        mtp_engine * e = get();
        ++users_;
        mtp_status st;
        {
            nb::gil_scoped_release release;
            st = f(e);
        }
        --users_;
        return st;
    }

    mtp_engine *             eng_   = nullptr;
    int                      users_ = 0;
    mtp_step_result          res_;
    std::vector<std::string> pieces_;
};

} // namespace

NB_MODULE(_core, m) {
    m.doc() = "mtprun native engine: MTP speculative decoding on llama.cpp (use mtprun.engine.Engine). "
              "The structs mirror engine.h; the Python config and statistics classes share their field names.";

    // enum member names are the Python library's spellings (StopReason, ModelInfo.mtp_kind)
    nb::enum_<mtp_status>(m, "Status", "An engine call's outcome (engine.h mtp_status).")
        .value("ok", MTP_OK)
        .value("invalid", MTP_ERR_INVALID)
        .value("model", MTP_ERR_MODEL)
        .value("context", MTP_ERR_CONTEXT)
        .value("runtime", MTP_ERR_RUNTIME)
        .value("state", MTP_ERR_STATE)
        .value("device", MTP_ERR_DEVICE);
    nb::enum_<mtp_stop>(m, "Stop", "Why a generation stopped (engine.h mtp_stop); none: it goes on.")
        .value("none", MTP_STOP_NONE)
        .value("eos", MTP_STOP_EOS)
        .value("length", MTP_STOP_LENGTH)
        .value("context", MTP_STOP_CONTEXT)
        .value("cancelled", MTP_STOP_CANCELLED);
    nb::enum_<mtp_head_kind>(m, "MtpKind", "Where a model's MTP head lives (engine.h mtp_head_kind).")
        .value("none", MTP_KIND_NONE)
        .value("embedded", MTP_KIND_EMBEDDED)
        .value("sidecar", MTP_KIND_SIDECAR);

    g_core_error_type = PyErr_NewExceptionWithDoc("mtprun._core.CoreError",
        "An engine failure: args are (status, message); status is a Status.",
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

    nb::class_<mtp_placement_params>(m, "PlacementParams",
        "Where the model runs (devices.h mtp_placement_params; Python: Placement): --rpc servers, -dev, -devd, -ts, -sm.")
        .def(nb::init<>())
        .def_rw("rpc", &mtp_placement_params::rpc, "HOST:PORT of rpc-servers, registered before loading")
        .def_rw("devices", &mtp_placement_params::devices, "device names; [none]: no offload; empty: llama.cpp's choice")
        .def_rw("devices_draft", &mtp_placement_params::devices_draft, "where the MTP head / sidecar runs; empty: with the target")
        .def_rw("tensor_split", &mtp_placement_params::tensor_split, "proportion per device; empty: by free memory")
        .def_rw("split_mode", &mtp_placement_params::split_mode, "-1: layer (llama.cpp's default); else a llama_split_mode")
        .def_rw("rpc_timeout_ms", &mtp_placement_params::rpc_timeout_ms, "bound on connecting to and greeting each server");

    m.def("rpc_supported", &mtp_rpc_supported, "Whether the loaded llama.cpp was built with GGML_RPC=ON.");
    m.def("rpc_rebuild_hint", []() { return std::string(mtp_rpc_rebuild_hint()); },
          "The one line that says how to rebuild llama-cpp-python with RPC support.");
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

    nb::class_<mtp_model_params>(m, "ModelParams", "What to load and how (engine.h mtp_model_params; Python: ModelConfig).")
        .def(nb::init<>())
        .def_rw("path", &mtp_model_params::path)
        .def_rw("draft_path", &mtp_model_params::draft_path, "empty: embedded MTP layers or none")
        .def_rw("n_ctx", &mtp_model_params::n_ctx)
        .def_rw("n_batch", &mtp_model_params::n_batch)
        .def_rw("n_threads", &mtp_model_params::n_threads, "0: physical cores")
        .def_rw("n_gpu_layers", &mtp_model_params::n_gpu_layers, "-1: all")
        .def_rw("flash_attn", &mtp_model_params::flash_attn, "-1 auto, 0 off, 1 on")
        .def_rw("mtp", &mtp_model_params::mtp, "load the MTP head (False: plain decoding only)")
        .def_rw("n_draft_capacity", &mtp_model_params::n_draft_capacity)
        .def_rw("verbose", &mtp_model_params::verbose)
        .def_rw("placement", &mtp_model_params::placement, "devices: --rpc, -dev, -devd, -ts, -sm");

    nb::class_<mtp_memory_entry>(m, "MemoryEntry", "One buffer type of one context in llama.cpp's memory breakdown (bytes).")
        .def_ro("context", &mtp_memory_entry::context, "target, draft (or other: a context made elsewhere)")
        .def_ro("buffer", &mtp_memory_entry::buffer)
        .def_ro("device", &mtp_memory_entry::device)
        .def_ro("device_description", &mtp_memory_entry::device_description, "e.g. an RPC server's HOST:PORT")
        .def_ro("host", &mtp_memory_entry::host)
        .def_ro("shared_model", &mtp_memory_entry::shared_model, "the weights counted here are the target's")
        .def_ro("model", &mtp_memory_entry::model)
        .def_ro("state", &mtp_memory_entry::state)
        .def_ro("compute", &mtp_memory_entry::compute);

    nb::class_<mtp_device_memory>(m, "DeviceMemory", "A backend device and its memory in bytes.")
        .def_ro("name", &mtp_device_memory::name)
        .def_ro("description", &mtp_device_memory::description)
        .def_ro("type", &mtp_device_memory::type, "cpu, gpu, igpu or accel")
        .def_ro("free", &mtp_device_memory::free)
        .def_ro("total", &mtp_device_memory::total);

    nb::class_<mtp_model_info>(m, "ModelInfo", "What a loaded model offers (engine.h mtp_model_info; Python: ModelInfo).")
        .def_ro("arch", &mtp_model_info::arch)
        .def_ro("description", &mtp_model_info::description)
        .def_ro("size_bytes", &mtp_model_info::size_bytes)
        .def_ro("n_params", &mtp_model_info::n_params)
        .def_ro("n_vocab", &mtp_model_info::n_vocab)
        .def_ro("n_ctx", &mtp_model_info::n_ctx)
        .def_ro("n_ctx_train", &mtp_model_info::n_ctx_train)
        .def_ro("n_layer", &mtp_model_info::n_layer)
        .def_ro("n_embd", &mtp_model_info::n_embd)
        .def_ro("n_layer_nextn", &mtp_model_info::n_layer_nextn)
        .def_ro("mtp_kind", &mtp_model_info::mtp_kind)
        .def_ro("mtp_active", &mtp_model_info::mtp_active)
        .def_ro("mtp_note", &mtp_model_info::mtp_note)
        .def_ro("recurrent", &mtp_model_info::recurrent)
        .def_ro("mtp_chain", &mtp_model_info::mtp_chain)
        .def_prop_ro("chat_template", [](const mtp_model_info & i) { return lenient_str(i.chat_template); }, "\"\": none")
        .def_prop_ro("bos_token", [](const mtp_model_info & i) { return lenient_str(i.bos_token); })
        .def_prop_ro("eos_token", [](const mtp_model_info & i) { return lenient_str(i.eos_token); })
        .def_ro("add_bos", &mtp_model_info::add_bos)
        .def_ro("backend", &mtp_model_info::backend)
        .def_ro("system_info", &mtp_model_info::system_info)
        .def_ro("memory", &mtp_model_info::memory);

    nb::class_<mtp_sampling_params>(m, "SamplingParams", "Token selection of one generation (engine.h mtp_sampling_params; Python: SamplingConfig).")
        .def(nb::init<>())
        .def_rw("temperature", &mtp_sampling_params::temperature)
        .def_rw("top_k", &mtp_sampling_params::top_k)
        .def_rw("top_p", &mtp_sampling_params::top_p)
        .def_rw("min_p", &mtp_sampling_params::min_p)
        .def_rw("repeat_penalty", &mtp_sampling_params::repeat_penalty)
        .def_rw("repeat_last_n", &mtp_sampling_params::repeat_last_n)
        .def_rw("presence_penalty", &mtp_sampling_params::presence_penalty)
        .def_rw("seed", &mtp_sampling_params::seed);

    nb::class_<mtp_spec_params>(m, "SpecParams", "How a generation drafts (engine.h mtp_spec_params; Python: SpecConfig).")
        .def(nb::init<>())
        .def_rw("enabled", &mtp_spec_params::enabled)
        .def_rw("n_max", &mtp_spec_params::n_max)
        .def_rw("adaptive", &mtp_spec_params::adaptive)
        .def_rw("p_min", &mtp_spec_params::p_min);

    nb::class_<mtp_gen_params>(m, "GenParams", "One generation's settings (engine.h mtp_gen_params; Python: GenerationConfig).")
        .def(nb::init<>())
        .def_rw("max_tokens", &mtp_gen_params::max_tokens)
        .def_rw("sampling", &mtp_gen_params::sampling)
        .def_rw("spec", &mtp_gen_params::spec);

    nb::class_<mtp_policy_estimates>(m, "PolicyEstimates", "The draft-length policy's estimates (policy.h; Python: PolicyEstimates).")
        .def_ro("acceptance_by_position", &mtp_policy_estimates::acceptance_by_position)
        .def_ro("target_seconds_by_batch", &mtp_policy_estimates::target_seconds_by_batch)
        .def_ro("head_seconds", &mtp_policy_estimates::head_seconds)
        .def_ro("token_seconds", &mtp_policy_estimates::token_seconds);

    // the policy on its own, fed by hand: for tests of the controller that must not depend on timing
    nb::class_<mtp_policy>(m, "Policy",
        "The draft-length policy (policy.h) outside an engine: fed measurements by hand, it makes the "
        "choices an engine's would (tests simulate a machine and a text with it).")
        .def("__init__", [](mtp_policy * p, int32_t cap) {
                 if (cap < 0 || cap > 64) {
                     throw nb::value_error("cap must be in 0..64");
                 }
                 new (p) mtp_policy();
                 mtp_policy_init(*p, cap);
             }, "cap"_a)
        .def("set_costs", [](mtp_policy & p, const std::vector<double> & t_target, double t_head, bool pin) {
                 if (!mtp_policy_costs_valid(t_target, t_head)) {
                     throw nb::value_error("the policy's costs must be positive");
                 }
                 mtp_policy_set_costs(p, t_target, t_head, pin);
             }, "t_target"_a, "t_head"_a, "pin"_a)
        .def("next", [](mtp_policy & p, int32_t n_max) { return mtp_policy_next(p, n_max); }, "n_max"_a,
             "The length to draft next (0: a plain step).")
        .def("observe", [](mtp_policy & p, int32_t n_drafted, int32_t n_acc, double t_step, double t_verify,
                           int32_t n_head_decodes, double t_head, double t_choose, double t_caller, int32_t n_caller_tokens) {
                 if (n_drafted < 0 || n_drafted > p.cap || n_acc < 0 || n_acc > n_drafted || n_head_decodes < 0 || n_caller_tokens < 0) {
                     throw nb::value_error("a step drafts 0..cap tokens and accepts at most those");
                 }
                 mtp_policy_observe(p, n_drafted, n_acc, t_step, t_verify, n_head_decodes, t_head, t_choose, t_caller, n_caller_tokens);
             }, "n_drafted"_a, "n_accepted"_a, "t_step"_a, "t_verify"_a, "n_head_decodes"_a, "t_head"_a, "t_choose"_a = 0.0,
             "t_caller"_a = 0.0, "n_caller_tokens"_a = 0,
             "One step's measurements, as the engine reports them (policy.h mtp_policy_observe).")
        .def("estimate", [](const mtp_policy & p, int32_t n_max) { return mtp_policy_estimate(p, std::max(1, std::min(n_max, p.cap))); },
             "n_max"_a);

    nb::class_<mtp_stats>(m, "Stats", "Statistics of a generation (engine.h mtp_stats; Python: GenerationStats).")
        .def_ro("n_prompt_tokens", &mtp_stats::n_prompt_tokens)
        .def_ro("n_prompt_reused", &mtp_stats::n_prompt_reused)
        .def_ro("prompt_seconds", &mtp_stats::prompt_seconds)
        .def_ro("n_generated", &mtp_stats::n_generated)
        .def_ro("generation_seconds", &mtp_stats::generation_seconds)
        .def_ro("n_drafted", &mtp_stats::n_drafted)
        .def_ro("n_accepted", &mtp_stats::n_accepted)
        .def_ro("drafted_by_position", &mtp_stats::drafted_by_position)
        .def_ro("accepted_by_position", &mtp_stats::accepted_by_position)
        .def_ro("n_target_passes", &mtp_stats::n_target_passes)
        .def_ro("draft_seconds", &mtp_stats::draft_seconds)
        .def_ro("verify_seconds", &mtp_stats::verify_seconds)
        .def_ro("sample_seconds", &mtp_stats::sample_seconds)
        .def_ro("mtp", &mtp_stats::mtp)
        .def_ro("adaptive", &mtp_stats::adaptive)
        .def_ro("n_max", &mtp_stats::n_max)
        .def_ro("steps_by_draft_length", &mtp_stats::steps_by_draft_length)
        .def_ro("policy", &mtp_stats::policy);

    nb::class_<Engine>(m, "Engine", "A loaded target (+ MTP head) with its contexts and the speculative loop.")
        .def(nb::init<const mtp_model_params &>(), "params"_a,
             "Load the model(s) and create the contexts; raises CoreError(status, message).")
        .def("close", &Engine::close, "Cancel what runs, wait for it, free the model(s) and contexts.")
        .def_prop_ro("closed", &Engine::closed)
        .def("info", &Engine::info, "What the model offers and how it was loaded.")
        .def("tokenize", &Engine::tokenize, "text"_a, "add_special"_a, "parse_special"_a, "UTF-8 bytes to token ids.")
        .def("token_piece", &Engine::token_piece, "token"_a, "The bytes of one token (special tokens rendered).")
        .def("detokenize", &Engine::detokenize, "tokens"_a, "The bytes of a token sequence.")
        .def("begin", &Engine::begin, "prompt"_a, "params"_a,
             "Start a generation: reuse the cached prefix and process the rest of the prompt.")
        .def("step", &Engine::step,
             "One speculative step: returns (tokens, pieces, from_draft, n_drafted, n_accepted, stop); stop != Stop.none ends it.")
        .def("stats", &Engine::stats, "Statistics of the current or last generation.")
        .def("next_logits", &Engine::next_logits,
             "The target's logits for the token after the finished conversation (for tests; state is kept).")
        .def("cancel", &Engine::cancel, "Make the running generation stop at the next step (thread-safe).")
        .def("reset", &Engine::reset, "Forget the cached conversation.")
        .def("set_policy_costs", &Engine::set_policy_costs, "t_target"_a, "t_head"_a, "pin"_a,
             "Set the draft-length policy's costs (t_target[k-1]: a target pass over k tokens; t_head: one "
             "head decode; seconds): pin=False a starting estimate the measurements replace, pin=True fixed "
             "(measurements ignored; for tests). Raises CoreError(status, message).");

    m.def("devices", &mtp_memory_devices, "The backend devices with their free and total memory.");
    m.def("memory_dry_run", [](const mtp_model_params & p) {
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
        return entries;
    }, "params"_a,
    "What the engine's contexts would allocate (llama.cpp's breakdown rows), from llama.cpp's no_alloc dry "
    "run: no weights are read. Raises CoreError(status, message).");
    m.def("context_memory", [](uintptr_t ctx) {
        std::vector<mtp_memory_entry> entries;
        mtp_memory_collect(reinterpret_cast<const llama_context *>(ctx), "other", false, entries);
        return entries;
    }, "address"_a,
    "llama.cpp's memory breakdown of a llama_context created elsewhere in this process through the same "
    "libllama (e.g. llama-cpp-python's), given its address; for checking mtprun against llama.cpp's defaults.");
}
