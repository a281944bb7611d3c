"""mtprun.tuning: where saved settings live, what identifies a model and a machine, and the file's
round trip (atomic, corrupt or foreign content reported and ignored)."""

from __future__ import annotations

import json

import pytest

from mtprun import tuning
from mtprun.config import PolicyCosts
from mtprun.errors import InvalidInputError


def test_config_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert tuning.store_path() == tmp_path / "cfg" / "mtprun" / "tuning.json"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/dir")  # the XDG spec: relative values are ignored
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert tuning.config_dir() == tmp_path / "home" / ".config" / "mtprun"


def test_model_identity_changes_with_the_file(tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF" + b"\1" * 100)
    a = tuning.model_identity(f)
    assert a == tuning.model_identity(tmp_path / "." / "m.gguf")  # resolved path
    f.write_bytes(b"GGUF" + b"\2" * 100)  # same size, other header
    b = tuning.model_identity(f)
    assert a["size"] == b["size"] and a["header_sha256"] != b["header_sha256"]
    d = tmp_path / "mtp-m.gguf"
    d.write_bytes(b"GGUF")
    assert tuning.model_identity(f, d)["draft"]["path"] == str(d.resolve())


def test_store_round_trip_and_forget(tmp_path):
    path = tmp_path / "sub" / "tuning.json"
    model, machine = {"path": "/m.gguf", "size": 1, "header_sha256": "x"}, tuning.machine_identity("CPU")
    store = tuning.Store.load(path)
    assert store.entries == {} and store.warning is None
    store.put(tuning.Saved(setting="3", model=model, machine=machine, x_plain=1.5, costs={"a": 0.1}))
    store.save()
    assert not [p for p in path.parent.iterdir() if p.name != "tuning.json"]  # no temp file left behind
    again = tuning.Store.load(path)
    got = again.get(model, machine)
    assert got is not None and got.setting == "3" and got.x_plain == 1.5 and got.costs == {"a": 0.1} and got.saved_at
    assert again.get(model, {**machine, "backend": "CUDA0"}) is None  # another backend is another machine
    assert again.forget({"path": "/other.gguf"}) == 0
    assert again.forget({"path": "/m.gguf"}) == 1 and again.entries == {}


@pytest.mark.parametrize("content", ["{", "[]", json.dumps({"format": "x", "entries": {}}),
                                     json.dumps({"format": tuning.FORMAT, "entries": {"k": {"setting": 3}}})])
def test_corrupt_or_foreign_files_are_reported_and_ignored(tmp_path, content):
    path = tmp_path / "tuning.json"
    path.write_text(content)
    store = tuning.Store.load(path)
    assert store.entries == {} and store.warning and str(path) in store.warning and "\n" not in store.warning


def test_setting_spec():
    assert not tuning.setting_spec("plain").enabled
    spec = tuning.setting_spec("4", p_min=0.2)
    assert spec.enabled and spec.n_max == 4 and spec.p_min == 0.2
    with pytest.raises(InvalidInputError):
        tuning.setting_spec("lots")


def test_saved_costs_become_the_policys_starting_estimate():
    def saved(costs):
        return tuning.Saved(setting="auto", model={}, machine={}, costs=costs)

    # measured passes up to the first size not measured, and the head decode
    got = saved({"target_seconds_by_batch": [0.01, 0.03, None, 0.07], "head_seconds": 0.002}).cost_prior()
    assert got == PolicyCosts((0.01, 0.03), 0.002)
    # without a plain measurement: the adaptive run's own estimates
    policy = {"target_seconds_by_batch": [0.01, 0.012], "head_seconds": 0.001, "acceptance_by_position": [0.5]}
    assert saved({"target_seconds_by_batch": [None, 0.03], "auto_policy": policy}).cost_prior() == PolicyCosts((0.01, 0.012), 0.001)
    for unusable in ({}, {"target_seconds_by_batch": [0.01]}, {"target_seconds_by_batch": ["x"], "head_seconds": 0.1},
                     {"target_seconds_by_batch": [0.01], "head_seconds": -1}):
        assert saved(unusable).cost_prior() is None
    spec = tuning.setting_spec("auto", cost_prior=got)
    assert spec.adaptive and spec.cost_prior == got
    assert tuning.setting_spec("plain", cost_prior=got).cost_prior is None
