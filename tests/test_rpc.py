"""Devices: llama.cpp's RPC backend (--rpc) and device placement (-dev, -devd, -ts, -sm).

Everywhere: the option values are checked (one line, exit 2), --rpc without RPC support names the
rebuild, the placement of a CPU-only run does not change its output. Where the installed llama.cpp
has RPC (scripts/rpc_check.sh's environment, or CMAKE_ARGS="-DGGML_RPC=on"): two RPC servers on
127.0.0.1 (this package's own, ``_core.rpc_serve``, or ``$MTPRUN_RPC_SERVER``'s binary) run the
synthetic model with the same output as local runs, and each way a server can fail ends the run
with one line and exit status 1, bounded in time. RPC runs happen in subprocesses: ggml ends the
process on a lost connection.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _cli_models import isolated_home, models  # noqa: F401  (fixtures)
from mtprun.cli.app import app
from mtprun.config import Placement
from mtprun.engine import rpc_supported
from mtprun.errors import InvalidInputError
from mtprun.memory import device_usage

ROOT = Path(__file__).resolve().parent.parent
GREEDY = ["--temp", "0"]
HAS_RPC = rpc_supported()
needs_rpc = pytest.mark.skipif(
    not HAS_RPC,
    reason="the installed llama.cpp has no RPC support (scripts/rpc_check.sh runs these tests in an RPC build; or "
           "CMAKE_ARGS=\"-DGGML_RPC=on\" pip install --force-reinstall --no-cache-dir --no-deps llama-cpp-python==0.3.36)",
)


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def one_line_error(r, code: int, *needles: str) -> str:
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


# --- everywhere ------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, needle", [
    (["--rpc", "localhost"], "HOST:PORT"),
    (["--rpc", "127.0.0.1:99999"], "HOST:PORT"),
    (["--rpc", "127.0.0.1:50052,"], "empty name"),
    (["--rpc", "h:1,h:1"], "twice"),
    (["-ts", "3,x"], "tensor split"),
    (["-ts", "0,0"], "not all be 0"),
    (["-ts", "1," * 16 + "1"], "at most 15"),
    (["-sm", "diagonal"], "none, layer, row, tensor"),
    (["-dev", "none,RPC0"], "'none'"),
    (["-devd", "RPC0,RPC0"], "twice"),
])
def test_bad_device_values_fail_with_one_line_before_loading(args, needle):
    # --demo would build a model first: a bad value must fail before (exit 2, one line)
    r = invoke("run", "--demo", "-p", "hi", *args)
    one_line_error(r, 2, "invalid option value", needle)


@pytest.mark.parametrize("command", ["run", "info", "bench", "chat"])
def test_rpc_option_exists_on_every_model_command(command):
    r = invoke(command, "--help")
    assert r.exit_code == 0
    for opt in ("--rpc", "--device", "--device-draft", "--tensor-split", "--split-mode"):
        assert opt in r.stdout, (command, opt)


@pytest.mark.skipif(HAS_RPC, reason="this llama.cpp has RPC support")
def test_rpc_without_rpc_support_names_the_rebuild(models):
    r = invoke("run", "-m", str(models.demo.model_path), "-p", "hi", "--rpc", "127.0.0.1:50052")
    one_line_error(r, 1, "no RPC support", 'CMAKE_ARGS="-DGGML_RPC=on"', "llama-cpp-python==0.3.36", "--no-cache-dir")


def test_unknown_device_fails_with_one_line_naming_what_exists(models):
    r = invoke("run", "-m", str(models.demo.model_path), "-p", "hi", "-dev", "CUDA7")
    line = one_line_error(r, 2, "invalid device 'CUDA7'", "-dev/--device")
    assert ("available" in line) or ("--rpc" in line)


def test_cpu_placements_give_the_same_greedy_output(models):
    base = ["run", "-m", str(models.endless.model_path), "-p", "Tell me a story", "-n", "24", *GREEDY]
    want = invoke(*base)
    assert want.exit_code == 0, want.stderr
    for extra in (["-dev", "none"], ["-devd", "none"], ["-dev", "none", "-devd", "none", "-sm", "none"], ["-ts", "1"]):
        r = invoke(*base, *extra)
        assert r.exit_code == 0, (extra, r.stderr)
        assert r.stdout == want.stdout, extra


def test_info_lists_the_devices_in_use(models):
    r = invoke("info", "-m", str(models.demo.model_path))
    assert r.exit_code == 0, r.stderr
    assert "devices in use" in r.stdout and "CPU" in r.stdout


def test_placement_parses_llama_cli_spellings():
    p = Placement.parse(rpc="10.0.0.2:50052, gpu-box:50053", device="RPC0,RPC1", device_draft="RPC1",
                        tensor_split="3/1", split_mode="Layer")
    assert p.rpc == ("10.0.0.2:50052", "gpu-box:50053") and p.devices == ("RPC0", "RPC1")
    assert p.devices_draft == ("RPC1",) and p.tensor_split == (3.0, 1.0) and p.split_mode == "layer"
    assert Placement().is_default and not p.is_default
    with pytest.raises(InvalidInputError):
        Placement(rpc=("[::1]:50052",))


def test_device_usage_groups_the_breakdown_by_device():
    from types import SimpleNamespace as Row  # the fields of _core.MemoryEntry

    rows = [
        Row(**{"context": "target", "buffer": "RPC0[h:1]", "device": "RPC0", "device_description": "h:1", "host": False,
         "shared_model": False, "model": 100, "state": 10, "compute": 5}),
        Row(**{"context": "target", "buffer": "CPU", "device": "CPU", "device_description": "cpu", "host": True,
         "shared_model": False, "model": 7, "state": 0, "compute": 1}),
        Row(**{"context": "draft", "buffer": "RPC0[h:1]", "device": "RPC0", "device_description": "h:1", "host": False,
         "shared_model": True, "model": 100, "state": 2, "compute": 3}),
        Row(**{"context": "draft", "buffer": "RPC1[h:2]", "device": "RPC1", "device_description": "h:2", "host": False,
         "shared_model": True, "model": 0, "state": 0, "compute": 0}),
    ]
    got = {d.name: d for d in device_usage(rows)}
    assert set(got) == {"RPC0", "CPU"}  # RPC1: nothing allocated
    assert (got["RPC0"].weights, got["RPC0"].state, got["RPC0"].compute, got["RPC0"].mtp) == (100, 10, 5, 5)
    assert got["RPC0"].description == "h:1" and got["CPU"].total == 8


# --- with RPC support ------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the RPC server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the RPC server did not start listening")


@pytest.fixture
def rpc_servers():
    """Factory: start n RPC servers on free loopback ports; all are killed at the end."""
    procs: list[subprocess.Popen] = []

    def start(n: int = 2) -> list[tuple[str, subprocess.Popen]]:
        out = []
        for _ in range(n):
            port = _free_port()
            binary = os.environ.get("MTPRUN_RPC_SERVER")
            cmd = ([binary, "-H", "127.0.0.1", "-p", str(port), "-t", "1"] if binary else
                   [sys.executable, "-c", f"from mtprun._native import core; core.rpc_serve('127.0.0.1:{port}', 1)"])
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(proc)
            _wait_listening(port, proc)
            out.append((f"127.0.0.1:{port}", proc))
        return out

    yield start
    for p in procs:
        p.kill()
        p.wait()


def _mtprun(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtprun", *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _one_line(p: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    assert p.returncode == code, (p.returncode, p.stdout[-500:], p.stderr[-2000:])
    lines = [x for x in p.stderr.strip().splitlines() if x.strip()]
    assert lines and lines[-1].startswith("error: "), p.stderr
    assert "Traceback" not in p.stderr and "core dumped" not in p.stderr
    for n in needles:
        assert n in lines[-1], lines[-1]
    return lines[-1]


@needs_rpc
def test_rpc_output_equals_local_output_and_mtp_equals_plain(synth_model, rpc_servers, tmp_path):
    servers = rpc_servers(2)
    model = synth_model(arch="qwen35", mode="oracle", agree=0.9, seed=1)
    code = (
        "import sys; sys.path.insert(0, {scripts!r}); import rpc_check as rc; from pathlib import Path\n"
        "runs, problems = rc.check(Path({model!r}), {rpc!r}, tokens=32, n_draft=3)\n"
        "print(rc.report(runs)); print('PROBLEMS', problems); sys.exit(1 if problems else 0)\n"
    ).format(scripts=str(ROOT / "scripts"), model=str(model.model_path), rpc=tuple(ep for ep, _ in servers))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "RPC0" in p.stdout and "RPC1" in p.stdout  # the weights are split across both servers


@needs_rpc
def test_rpc_devices_are_listed_by_info_and_the_head_goes_to_devd(models, rpc_servers):
    servers = rpc_servers(2)
    rpc = ",".join(ep for ep, _ in servers)
    p = _mtprun("info", "-m", str(models.demo.model_path), "--rpc", rpc, "-devd", "RPC1", "--json")
    assert p.returncode == 0, p.stderr
    import json

    devices = {d["name"]: d for d in json.loads(p.stdout)["devices"]}
    assert {"RPC0", "RPC1"} <= set(devices)
    assert devices["RPC0"]["description"] == servers[0][0] and devices["RPC1"]["weights"] > 0
    # everything on RPC0 (-ts 1,0) but the model's own MTP layers, which -devd puts on RPC1
    p = _mtprun("info", "-m", str(models.demo.model_path), "--rpc", rpc, "-dev", "RPC0,RPC1", "-ts", "1,0",
                "-devd", "RPC1", "--json")
    assert p.returncode == 0, p.stderr
    devices = {d["name"]: d for d in json.loads(p.stdout)["devices"]}
    assert devices["RPC0"]["weights"] > 0 and 0 < devices["RPC1"]["weights"] < devices["RPC0"]["weights"]
    q = _mtprun("run", "-m", str(models.demo.model_path), "--rpc", rpc, "-dev", "RPC0,RPC1", "-ts", "1,0",
                "-devd", "RPC1", "-p", "Tell me a story", "-n", "16", *GREEDY)
    r = _mtprun("run", "-m", str(models.demo.model_path), "-p", "Tell me a story", "-n", "16", *GREEDY)
    assert q.returncode == 0 and r.returncode == 0, q.stderr + r.stderr
    assert q.stdout == r.stdout


@needs_rpc
def test_unreachable_rpc_server_fails_with_one_line(models):
    t0 = time.monotonic()
    p = _mtprun("run", "-m", str(models.demo.model_path), "-p", "hi", "--rpc", f"127.0.0.1:{_free_port()}")
    _one_line(p, 1, "cannot connect to RPC server", "refused")
    assert time.monotonic() - t0 < 60


def _fake_server(reply: bytes | None) -> tuple[int, threading.Event]:
    """A TCP server answering every connection with ``reply`` (None: never answers)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        conns = []
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except OSError:
                continue
            conns.append(c)
            if reply is not None:
                c.recv(64)
                c.sendall(reply)
                c.close()
        srv.close()

    threading.Thread(target=serve, daemon=True).start()
    return srv.getsockname()[1], stop


@needs_rpc
def test_rpc_server_of_another_protocol_version_fails_with_one_line(models):
    import struct

    port, stop = _fake_server(struct.pack("<Q", 28) + bytes([6, 0, 0, 0]) + bytes(24))  # protocol 6.0.0
    try:
        p = _mtprun("run", "-m", str(models.demo.model_path), "-p", "hi", "--rpc", f"127.0.0.1:{port}")
    finally:
        stop.set()
    _one_line(p, 1, "protocol 6.0.0", "rpc-server")


@needs_rpc
def test_rpc_server_that_never_answers_fails_within_the_timeout(models):
    port, stop = _fake_server(None)
    t0 = time.monotonic()
    try:
        p = _mtprun("run", "-m", str(models.demo.model_path), "-p", "hi", "--rpc", f"127.0.0.1:{port}")
    finally:
        stop.set()
    _one_line(p, 1, "did not answer")
    assert time.monotonic() - t0 < 60


@needs_rpc
def test_rpc_connection_lost_mid_generation_ends_with_one_line(models, rpc_servers):
    (ep, server), = rpc_servers(1)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mtprun", "run", "-m", str(models.endless.model_path), "-p", "Tell me a story",
         "--rpc", ep, "-n", "100000", *GREEDY],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout.read(40)  # generating across the server
        server.kill()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = err.decode(errors="replace")
    assert proc.returncode == 1, err[-2000:]
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert lines[-1].startswith("error: ") and "RPC" in lines[-1], err[-2000:]
    assert "Traceback" not in err
