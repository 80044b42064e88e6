"""The XLA:CPU flags ferjax adds on import: only for tested jaxlib versions, never
overriding the user's own flags, and off with FERJAX_XLA_TUNING=0."""

import importlib.metadata

from ferjax import xla_tuning


def test_only_tested_versions_get_flags():
    assert xla_tuning.flags_for("0.10.2")
    assert xla_tuning.flags_for("0.99.0") == ()


def _only_jaxlib(version):
    """importlib.metadata.version as on a CPU-only machine with this jaxlib."""
    def fake(name):
        if name == "jaxlib":
            return version
        raise importlib.metadata.PackageNotFoundError(name)
    return fake


def test_flags_are_appended_once_and_never_override(monkeypatch):
    monkeypatch.setattr(importlib.metadata, "version", _only_jaxlib("0.10.2"))
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    added = xla_tuning.apply(env)
    assert added and env["XLA_FLAGS"].startswith("--xla_force_host_platform_device_count=4 ")
    assert all(flag in env["XLA_FLAGS"] for flag in added)
    assert xla_tuning.apply(env) == []          # idempotent

    name = xla_tuning.CPU_FLAGS["0.10"][0][0]
    mine = {"XLA_FLAGS": f"{name}=dot"}
    added = xla_tuning.apply(mine)
    assert not any(flag.startswith(name) for flag in added)      # the user's value stays
    assert mine["XLA_FLAGS"].split() == [f"{name}=dot", *added]


def test_opt_out_and_untested_versions_leave_the_environment_alone(monkeypatch):
    env = {"FERJAX_XLA_TUNING": "0"}
    assert xla_tuning.apply(env) == [] and "XLA_FLAGS" not in env
    monkeypatch.setattr(importlib.metadata, "version", _only_jaxlib("0.99.0"))
    env = {}
    assert xla_tuning.apply(env) == [] and env == {}
    # A GPU/TPU plugin next to a tested jaxlib: left alone as well.
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.10.2")
    assert xla_tuning.apply(env) == [] and env == {}
