// logging: llama.cpp's log is swallowed unless verbose; the last error lines are kept for messages
#include "log.h"

#include "engine.h"

#include <cstdio>
#include <mutex>

static std::mutex  g_log_mutex;
static bool        g_log_verbose = false;
static std::string g_log_errors; // recent error/warning text from llama.cpp

static void log_callback(enum ggml_log_level level, const char * text, void * /*user_data*/) {
    std::lock_guard<std::mutex> lock(g_log_mutex);
    if (g_log_verbose) {
        fputs(text, stderr);
        fflush(stderr);
    }
    if (level == GGML_LOG_LEVEL_ERROR || level == GGML_LOG_LEVEL_WARN) {
        g_log_errors += text;
        if (g_log_errors.size() > 4096) {
            g_log_errors.erase(0, g_log_errors.size() - 4096);
        }
    }
}

void log_install() {
    static std::once_flag once;
    std::call_once(once, []() { llama_backend_init(); });
    llama_log_set(log_callback, nullptr);
}

void mtp_set_verbose(bool verbose) {
    std::lock_guard<std::mutex> lock(g_log_mutex);
    g_log_verbose = verbose;
}

void log_clear() {
    std::lock_guard<std::mutex> lock(g_log_mutex);
    g_log_errors.clear();
}

// the most recent llama.cpp error line, trimmed, or "" (gives failures a cause)
std::string log_last_error() {
    std::lock_guard<std::mutex> lock(g_log_mutex);
    std::string s = g_log_errors;
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) {
        s.pop_back();
    }
    const size_t nl = s.rfind('\n');
    if (nl != std::string::npos) {
        s = s.substr(nl + 1);
    }
    return s;
}
