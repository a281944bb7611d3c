// Memory accounting over llama.cpp's staging breakdown API and ggml's device registry.
#include "memory.h"

#include "llama_staging.h"

#include "ggml-backend.h"

#include <algorithm>

void mtp_memory_collect(const llama_context * ctx, const char * which, bool shared_model,
                        std::vector<mtp_memory_entry> & out) {
    if (!ctx) {
        return;
    }
    for (const auto & [buft, mb] : llama_get_memory_breakdown(ctx)) {
        mtp_memory_entry m;
        m.context      = which;
        m.buffer       = buft ? ggml_backend_buft_name(buft) : "";
        ggml_backend_dev_t dev = buft ? ggml_backend_buft_get_device(buft) : nullptr;
        m.device       = dev ? ggml_backend_dev_name(dev) : "";
        m.host         = buft ? ggml_backend_buft_is_host(buft) : true;
        m.shared_model = shared_model;
        m.model        = mb.model;
        m.state        = mb.context;
        m.compute      = mb.compute;
        out.push_back(m);
    }
}

std::vector<mtp_device_memory> mtp_memory_devices() {
    std::vector<mtp_device_memory> out;
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        mtp_device_memory d;
        d.name        = ggml_backend_dev_name(dev);
        d.description = ggml_backend_dev_description(dev);
        switch (ggml_backend_dev_type(dev)) {
            case GGML_BACKEND_DEVICE_TYPE_CPU:  d.type = "cpu";   break;
            case GGML_BACKEND_DEVICE_TYPE_GPU:  d.type = "gpu";   break;
            case GGML_BACKEND_DEVICE_TYPE_IGPU: d.type = "igpu";  break;
            default:                            d.type = "accel"; break;
        }
        size_t free = 0, total = 0;
        ggml_backend_dev_memory(dev, &free, &total);
        d.free  = free;
        d.total = total;
        out.push_back(d);
    }
    return out;
}

bool mtp_memory_can_resume(llama_context * ctx, int32_t pos) {
    const int32_t n_swa = llama_model_n_swa(llama_get_model(ctx));
    if (n_swa <= 0 || pos <= 0) {
        return true;
    }
    const llama_pos pos_min = llama_memory_seq_pos_min(llama_get_memory(ctx), 0);
    // the token at `pos` attends to positions > pos - n_swa; they must all still be held
    return pos_min <= std::max(0, pos - n_swa);
}
