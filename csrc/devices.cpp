// Device placement and llama.cpp's RPC backend (see devices.h).
//
// ggml's RPC client aborts the process when it cannot connect, when the server speaks another
// protocol, and when a connection breaks later; its connect has no timeout. So each server is
// first checked here with bounded waits (the same greeting ggml sends), and once RPC is in use an
// abort inside ggml becomes one line and exit status 1 (the process cannot go on: ggml's state is
// gone), never a core dump.
#include "devices.h"

#include "ggml-backend.h"
#include "ggml-rpc.h" // RPC_PROTO_* only: the functions are reached through the registry

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

#if !defined(_WIN32)
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#endif

bool mtp_rpc_supported() {
    return llama_supports_rpc();
}

const char * mtp_rpc_rebuild_hint() {
    return "the installed llama.cpp has no RPC support; rebuild it with "
           "CMAKE_ARGS=\"-DGGML_RPC=on\" pip install --force-reinstall --no-cache-dir --no-deps llama-cpp-python==0.3.36";
}

// ---------------------------------------------------------------------------------------------
// endpoints

// host:port as ggml's parse_endpoint reads it (IPv4 host name or address, port 1..65535)
static bool endpoint_split(const std::string & ep, std::string & host, int & port) {
    const size_t colon = ep.find(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 >= ep.size() || ep.find(':', colon + 1) != std::string::npos) {
        return false;
    }
    host = ep.substr(0, colon);
    const std::string p = ep.substr(colon + 1);
    if (p.size() > 5 || !std::all_of(p.begin(), p.end(), [](char c) { return c >= '0' && c <= '9'; })) {
        return false;
    }
    port = std::atoi(p.c_str());
    return port >= 1 && port <= 65535;
}

#if !defined(_WIN32)
// wait for fd to become readable/writable within the deadline; false on timeout
static bool wait_fd(int fd, short events, int timeout_ms) {
    pollfd pfd = { fd, events, 0 };
    int rc;
    do {
        rc = poll(&pfd, 1, timeout_ms);
    } while (rc < 0 && errno == EINTR);
    return rc > 0;
}

static bool recv_all(int fd, void * buf, size_t n, int timeout_ms, std::string & why) {
    char * p = (char *) buf;
    while (n > 0) {
        if (!wait_fd(fd, POLLIN, timeout_ms)) {
            why = "timeout";
            return false;
        }
        const ssize_t r = recv(fd, p, n, 0);
        if (r == 0) {
            why = "closed";
            return false;
        }
        if (r < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            why = std::strerror(errno);
            return false;
        }
        p += r;
        n -= (size_t) r;
    }
    return true;
}

// connect and exchange the HELLO of ggml's RPC protocol (ggml-rpc.cpp negotiate_hello: command
// 14, a 24-byte capability block, answered by version major/minor/patch, padding and 24 bytes)
static bool rpc_probe(const std::string & ep, int timeout_ms, std::string & err) {
    std::string host;
    int port = 0;
    endpoint_split(ep, host, port);
    const double secs = timeout_ms / 1000.0;
    char secs_s[32];
    snprintf(secs_s, sizeof(secs_s), "%g s", secs);

    addrinfo hints = {};
    hints.ai_family   = AF_INET; // ggml's client resolves IPv4 only (gethostbyname)
    hints.ai_socktype = SOCK_STREAM;
    addrinfo * res = nullptr;
    const int gai = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
    if (gai != 0 || !res) {
        err = "RPC server " + ep + ": cannot resolve host '" + host + "' (" + gai_strerror(gai) + ")";
        return false;
    }
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) {
        freeaddrinfo(res);
        err = std::string("RPC server " + ep + ": cannot create a socket: ") + std::strerror(errno);
        return false;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL, 0) | O_NONBLOCK);
    int rc = connect(fd, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    if (rc < 0 && errno == EINPROGRESS) {
        if (!wait_fd(fd, POLLOUT, timeout_ms)) {
            close(fd);
            err = "RPC server " + ep + " did not accept a connection within " + secs_s + " (unreachable host or firewall?)";
            return false;
        }
        int so = 0;
        socklen_t len = sizeof(so);
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &so, &len);
        rc = so == 0 ? 0 : -1;
        errno = so;
    }
    if (rc < 0) {
        const int e = errno;
        close(fd);
        err = "cannot connect to RPC server " + ep + ": " + std::strerror(e) +
              (e == ECONNREFUSED ? " (is rpc-server running there, on that port?)" : "");
        return false;
    }

    unsigned char req[1 + 8 + 24] = {};
    req[0] = 14; // RPC_CMD_HELLO
    const uint64_t req_size = 24;
    std::memcpy(req + 1, &req_size, sizeof(req_size));
    size_t sent = 0;
    while (sent < sizeof(req)) {
        if (!wait_fd(fd, POLLOUT, timeout_ms)) break;
        const ssize_t s = send(fd, req + sent, sizeof(req) - sent, MSG_NOSIGNAL);
        if (s <= 0) {
            if (s < 0 && (errno == EINTR || errno == EAGAIN)) continue;
            break;
        }
        sent += (size_t) s;
    }
    uint64_t rsp_size = 0;
    unsigned char rsp[4 + 24] = {};
    std::string why;
    const bool ok = sent == sizeof(req) && recv_all(fd, &rsp_size, sizeof(rsp_size), timeout_ms, why) &&
                    rsp_size == sizeof(rsp) && recv_all(fd, rsp, sizeof(rsp), timeout_ms, why);
    close(fd);
    const std::string ours = std::to_string(RPC_PROTO_MAJOR_VERSION) + "." + std::to_string(RPC_PROTO_MINOR_VERSION) + "." +
                             std::to_string(RPC_PROTO_PATCH_VERSION);
    if (!ok) {
        if (why == "timeout") {
            err = "RPC server " + ep + " did not answer the greeting within " + secs_s +
                  " (is it serving another client? an rpc-server serves one at a time)";
        } else {
            err = "RPC server " + ep + " did not complete the ggml RPC greeting (protocol " + ours +
                  "): another llama.cpp version, or not an rpc-server; build rpc-server from the llama-cpp-python "
                  "0.3.36 sdist (scripts/rpc_check.sh shows how)";
        }
        return false;
    }
    if (rsp[0] != RPC_PROTO_MAJOR_VERSION || rsp[1] > RPC_PROTO_MINOR_VERSION) {
        err = "RPC server " + ep + " speaks ggml RPC protocol " + std::to_string(rsp[0]) + "." + std::to_string(rsp[1]) + "." +
              std::to_string(rsp[2]) + ", this llama.cpp speaks " + ours +
              "; build rpc-server from the llama-cpp-python 0.3.36 sdist (scripts/rpc_check.sh shows how)";
        return false;
    }
    return true;
}
#else
static bool rpc_probe(const std::string &, int, std::string &) {
    return true; // ggml's own connect decides (unbounded) on Windows
}
#endif

// ---------------------------------------------------------------------------------------------
// registration

static std::mutex               g_rpc_mutex;
static std::vector<std::string> g_rpc_registered;

// ggml aborts on any RPC failure after registration: one line, exit status 1, no core dump
static void rpc_abort_callback(const char * message) {
    std::string m = message ? message : "";
    // "file:line: text" -> "text"
    const size_t sep = m.find(": ");
    if (sep != std::string::npos && m.find(':') < sep) {
        m = m.substr(sep + 2);
    }
    while (!m.empty() && (m.back() == '\n' || m.back() == ' ')) m.pop_back();
    for (char & c : m) {
        if (c == '\n' || c == '\r') c = ' ';
    }
    const bool rpc = m.find("RPC") != std::string::npos || m.find("connect") != std::string::npos;
    fprintf(stderr, "error: llama.cpp stopped: %s%s\n", m.c_str(),
            rpc ? " (an RPC server stopped or the connection to it was lost)" : "");
    fflush(stderr);
    _exit(1);
}

bool mtp_rpc_add_servers(const std::vector<std::string> & servers, int32_t timeout_ms, std::string & err) {
    if (servers.empty()) {
        return true;
    }
    if (!mtp_rpc_supported()) {
        err = mtp_rpc_rebuild_hint();
        return false;
    }
    if (timeout_ms < 1) {
        timeout_ms = 1;
    }
    for (const std::string & ep : servers) {
        std::string host;
        int port = 0;
        if (!endpoint_split(ep, host, port)) {
            err = "invalid RPC server '" + ep + "': expected HOST:PORT with a port within 1..65535";
            return false;
        }
    }
    if (servers.size() > GGML_RPC_MAX_SERVERS) {
        err = "at most " + std::to_string(GGML_RPC_MAX_SERVERS) + " RPC servers, got " + std::to_string(servers.size());
        return false;
    }
    std::lock_guard<std::mutex> lock(g_rpc_mutex);
    ggml_backend_reg_t reg = ggml_backend_reg_by_name("RPC");
    typedef ggml_backend_reg_t (*add_server_t)(const char * endpoint);
    auto add_server = reg ? (add_server_t) ggml_backend_reg_get_proc_address(reg, "ggml_backend_rpc_add_server") : nullptr;
    if (!add_server) {
        err = mtp_rpc_rebuild_hint();
        return false;
    }
    for (const std::string & ep : servers) {
        // every time, also for a server registered before: ggml would abort on a dead one
        if (!rpc_probe(ep, timeout_ms, err)) {
            return false;
        }
        if (std::find(g_rpc_registered.begin(), g_rpc_registered.end(), ep) != g_rpc_registered.end()) {
            continue;
        }
        ggml_set_abort_callback(rpc_abort_callback);
        ggml_backend_reg_t r = add_server(ep.c_str());
        if (!r) {
            err = "RPC server " + ep + " offers no devices";
            return false;
        }
        ggml_backend_register(r);
        g_rpc_registered.push_back(ep);
    }
    return true;
}

// ---------------------------------------------------------------------------------------------
// devices

std::string mtp_offload_device_names() {
    std::string names;
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        if (ggml_backend_dev_type(dev) == GGML_BACKEND_DEVICE_TYPE_CPU) continue;
        if (!names.empty()) names += ", ";
        names += ggml_backend_dev_name(dev);
    }
    return names;
}

// parse_device_list: "none" alone -> {nullptr}; else names of non-CPU devices, null-terminated
static bool device_list(const std::vector<std::string> & names, const char * opt, std::vector<ggml_backend_dev_t> & out,
                        std::string & err) {
    out.clear();
    if (names.empty()) {
        return true;
    }
    if (names.size() == 1 && names[0] == "none") {
        out.push_back(nullptr);
        return true;
    }
    for (const std::string & name : names) {
        ggml_backend_dev_t dev = ggml_backend_dev_by_name(name.c_str());
        if (!dev || ggml_backend_dev_type(dev) == GGML_BACKEND_DEVICE_TYPE_CPU) {
            const std::string avail = mtp_offload_device_names();
            err = std::string("invalid device '") + name + "' for " + opt + " (" +
                  (avail.empty() ? std::string("no offload devices here; --rpc HOST:PORT adds an rpc-server's")
                                 : "available: " + avail + ", or none") + ")";
            return false;
        }
        if (std::find(out.begin(), out.end(), dev) != out.end()) {
            err = std::string("device '") + name + "' is listed twice in " + opt;
            return false;
        }
        out.push_back(dev);
    }
    out.push_back(nullptr);
    return true;
}

static size_t n_devs(const std::vector<ggml_backend_dev_t> & devs) {
    return (size_t) std::count_if(devs.begin(), devs.end(), [](ggml_backend_dev_t d) { return d != nullptr; });
}

bool mtp_placement_init(const mtp_placement_params & p, mtp_placement & out, std::string & err, bool & invalid) {
    out = mtp_placement();
    invalid = false;
    if (!p.rpc.empty() && !mtp_rpc_add_servers(p.rpc, p.rpc_timeout_ms, err)) {
        return false;
    }
    invalid = true;
    if (p.split_mode < -1 || p.split_mode > LLAMA_SPLIT_MODE_TENSOR) {
        err = "invalid split mode " + std::to_string(p.split_mode);
        return false;
    }
    out.split_mode = p.split_mode;
    if (!device_list(p.devices, "-dev/--device", out.devices, err) ||
        !device_list(p.devices_draft, "-devd/--device-draft", out.devices_draft, err)) {
        return false;
    }
    if (!p.tensor_split.empty()) {
        const size_t n_max = llama_max_devices();
        if (p.tensor_split.size() >= n_max) { // as llama-cli's -ts
            err = "tensor split: " + std::to_string(p.tensor_split.size()) + " proportions, at most " + std::to_string(n_max - 1);
            return false;
        }
        float sum = 0.0f;
        for (float x : p.tensor_split) {
            if (!(x >= 0.0f) || !(x <= 1e9f)) {
                err = "tensor split proportions must be finite and >= 0";
                return false;
            }
            sum += x;
        }
        if (!(sum > 0.0f)) {
            err = "tensor split proportions must not all be 0";
            return false;
        }
        out.tensor_split.assign(n_max, 0.0f);
        std::copy(p.tensor_split.begin(), p.tensor_split.end(), out.tensor_split.begin());
    }
    invalid = false;
    return true;
}

bool mtp_placement_apply_target(mtp_placement & pl, llama_model_params & mp, int64_t n_layer_all, int64_t n_nextn,
                                bool head_layers, std::string & err) {
    if (!pl.devices.empty()) {
        mp.devices = pl.devices.data();
    }
    if (pl.split_mode >= 0) {
        mp.split_mode = (llama_split_mode) pl.split_mode;
    }
    if (!pl.tensor_split.empty()) {
        mp.tensor_split = pl.tensor_split.data();
    }
    pl.ot.clear();
    pl.ot_patterns.clear();
    pl.head_device.clear();
    if (!head_layers || pl.devices_draft.empty() || n_nextn <= 0) {
        return true;
    }
    // the model's own MTP layers on the -devd device: llama.cpp places them with the target's last
    // layers (its -devd applies to separate draft models only), so they are moved as -ot moves
    // tensors: a buffer-type override for each of their tensors ("blk.<il>.")
    if (n_devs(pl.devices_draft) > 1) {
        err = "-devd/--device-draft: the model's own MTP layers go to one device, got " + std::to_string(n_devs(pl.devices_draft));
        return false;
    }
    ggml_backend_dev_t dev = pl.devices_draft[0];
    ggml_backend_buffer_type_t buft;
    if (dev == nullptr) { // none: the CPU
        ggml_backend_dev_t cpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
        buft = cpu ? ggml_backend_dev_buffer_type(cpu) : nullptr;
        pl.head_device = cpu ? ggml_backend_dev_name(cpu) : "CPU";
    } else {
        // the context runs only the model's devices (and the CPU): the head's device must be one
        if (!pl.devices.empty() && std::find(pl.devices.begin(), pl.devices.end(), dev) == pl.devices.end()) {
            err = std::string("-devd/--device-draft ") + ggml_backend_dev_name(dev) +
                  ": the model's own MTP layers must go to one of the -dev/--device devices";
            return false;
        }
        buft = ggml_backend_dev_buffer_type(dev);
        pl.head_device = ggml_backend_dev_name(dev);
    }
    if (!buft) {
        err = "-devd/--device-draft: no buffer type for the device";
        return false;
    }
    for (int64_t il = n_layer_all - n_nextn; il < n_layer_all; ++il) {
        pl.ot_patterns.push_back("^blk\\." + std::to_string(il) + "\\.");
    }
    for (const std::string & pat : pl.ot_patterns) {
        pl.ot.push_back({ pat.c_str(), buft });
    }
    pl.ot.push_back({ nullptr, nullptr });
    mp.tensor_buft_overrides = pl.ot.data();
    return true;
}

void mtp_placement_apply_draft(const mtp_placement & pl, llama_model_params & mp) {
    // common_base_params_to_speculative: the draft's devices default to the target's; a draft
    // pinned to one device uses the layer split
    const auto & devs = pl.devices_draft.empty() ? pl.devices : pl.devices_draft;
    if (!devs.empty()) {
        mp.devices = const_cast<ggml_backend_dev_t *>(devs.data());
    }
    if (pl.split_mode >= 0) {
        mp.split_mode = (llama_split_mode) pl.split_mode;
    }
    if (!pl.tensor_split.empty()) {
        mp.tensor_split = pl.tensor_split.data();
    }
    if (!pl.devices_draft.empty() && n_devs(pl.devices_draft) == 1) {
        mp.split_mode = LLAMA_SPLIT_MODE_LAYER;
    }
}

// ---------------------------------------------------------------------------------------------
// a server (tests)

bool mtp_rpc_serve(const std::string & endpoint, int32_t n_threads, std::string & err) {
    std::string host;
    int port = 0;
    if (!endpoint_split(endpoint, host, port)) {
        err = "invalid endpoint '" + endpoint + "': expected HOST:PORT";
        return false;
    }
    if (!mtp_rpc_supported()) {
        err = mtp_rpc_rebuild_hint();
        return false;
    }
    ggml_backend_reg_t reg = ggml_backend_reg_by_name("RPC");
    typedef void (*start_server_t)(const char *, const char *, size_t, size_t, ggml_backend_dev_t *);
    auto start = reg ? (start_server_t) ggml_backend_reg_get_proc_address(reg, "ggml_backend_rpc_start_server") : nullptr;
    ggml_backend_dev_t cpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (!start || !cpu) {
        err = mtp_rpc_rebuild_hint();
        return false;
    }
    start(endpoint.c_str(), nullptr, (size_t) std::max(1, n_threads), 1, &cpu); // returns only if it cannot listen
    err = "the RPC server could not listen on " + endpoint;
    return false;
}
