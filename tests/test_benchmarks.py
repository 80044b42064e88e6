"""The benchmarks' measuring helpers: FLOPs, memory, peaks and the input-wait share."""

import importlib.util
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import pytest

from benchmarks import common, profile_step, train_step
from benchmarks.epoch import steady_windows
from benchmarks.train_step import set_config_field, step_usage, torch_child_env
from benchmarks.variants import main as variants_main, parse_variant
from ferjax.presets import base_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("kind, tflops", [
    ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA H200", 989),
    ("NVIDIA A100-SXM4-40GB", 312), ("TPU v4", 275), ("TPU v5 lite", 197), ("TPU v5", 459),
    ("TPU v6 lite", 918), ("cpu", None)])
def test_bf16_peak_takes_the_most_specific_device_name(kind, tflops):
    peak = common.bf16_peak_flops(kind)
    assert (peak is None) if tflops is None else peak == tflops * 1e12


def conv(x, w, stride=1, padding="SAME", groups=1):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=groups)


def test_jaxpr_flops_count_two_per_multiply_add():
    x, w = jnp.ones((32, 48)), jnp.ones((48, 80))
    assert common.jaxpr_flops(jax.make_jaxpr(jnp.matmul)(x, w)) == 2 * 32 * 48 * 80
    images, kernel = jnp.ones((2, 10, 10, 3)), jnp.ones((3, 3, 3, 8))
    valid = jax.make_jaxpr(lambda a, b: conv(a, b, padding="VALID"))(images, kernel)
    assert common.jaxpr_flops(valid) == 2 * 2 * 8 * 8 * 8 * 3 * 3 * 3
    # 'SAME' on a side of 10: 10 * 3 output-tap pairs, less the 2 that fall in the padding.
    same = jax.make_jaxpr(conv)(images, kernel)
    assert common.jaxpr_flops(same) == 2 * 2 * 8 * 3 * (10 * 3 - 2) ** 2
    # Nested: a jitted call inside a scan of 3 steps.
    scan = jax.make_jaxpr(lambda a: jax.lax.scan(
        lambda c, _: (jax.jit(jnp.matmul)(c, a), None), a, None, length=3)[0])(jnp.ones((4, 4)))
    assert common.jaxpr_flops(scan) == 3 * 2 * 4 ** 3


@pytest.mark.parametrize("stride,padding,groups,kernel", [
    (1, "SAME", 1, 3), (2, "SAME", 1, 3), (2, ((3, 3), (3, 3)), 1, 7), (2, ((1, 1), (1, 1)), 4, 3)])
def test_jaxpr_flops_of_a_convolution_and_its_gradients_agree_with_xla(stride, padding, groups,
                                                                       kernel):
    x = jnp.ones((2, 13, 13, 4))
    w = jnp.ones((kernel, kernel, 4 // groups, 8))
    forward = jax.jit(lambda a, b: conv(a, b, stride, padding, groups))
    flops = common.jaxpr_flops(forward.trace(x, w).jaxpr)
    assert flops == forward.lower(x, w).compile().cost_analysis()["flops"]
    # Both gradients (input and kernel) do the forward's multiply-adds once more each,
    # the strided input gradient included: its dilated input's zeros are not counted.
    both = jax.make_jaxpr(jax.grad(lambda a, b: conv(a, b, stride, padding, groups).sum(),
                                   argnums=(0, 1)))(x, w)
    assert common.jaxpr_flops(both) == 3 * flops


def test_compiled_buffers_count_a_donated_output_once():
    x = jnp.ones((1024, 256))
    plain = jax.jit(lambda a: a * 2).lower(x).compile()
    donated = jax.jit(lambda a: a * 2, donate_argnums=0).lower(x).compile()
    assert common.compiled_buffer_bytes(plain) >= 2 * x.nbytes
    assert common.compiled_buffer_bytes(donated) == pytest.approx(x.nbytes, rel=0.05)


def test_step_usage_cells():
    n = 2048  # three 16 MiB matrices: 0.05 GiB of buffers
    compiled = jax.jit(jnp.matmul).lower(jnp.ones((n, n)), jnp.ones((n, n))).compile()
    flops = 2 * n ** 3
    cells = step_usage(compiled, flops, seconds_per_step=flops / 1e12,
                       peak_tflops=4.0).split(" | ")
    assert cells[:3] == ["1.000", "25.0 %", "0.05"]  # 1 TFLOP/s on a 4 TFLOP/s device
    assert cells[3] == "—"                            # CPU: no allocator statistics
    assert step_usage(compiled, flops, 1.0, None).split(" | ")[1] == "—"  # CPU: peak unknown


def test_steady_windows_weight_windows_by_time_and_skip_the_compile_window(tmp_path):
    # (step, input wait fraction, steps/s): windows (4, 5] and (5, 7] last 1 s each,
    # (7, 9] 2 s; the first window past step 4 holds the compilation and is left out.
    rows = [(2, 0.1, 1.0), (4, 0.0, 2.0), (5, 0.9, 1.0), (7, 0.5, 2.0), (9, 0.2, 1.0)]
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps({
        "step": s, "train/input_wait_fraction": w, "train/steps_per_second": r,
        "train/loss": 1.0}) for s, w, r in rows) + "\n" + json.dumps({"step": 9, "eval/x": 1}))
    seconds, waited, steps = steady_windows(path, after_step=4)
    assert (seconds, waited, steps) == pytest.approx((3.0, 0.5 * 1 + 0.2 * 2, 4))
    with pytest.raises(ValueError, match="metrics.jsonl"):
        steady_windows(path, after_step=9)


@pytest.mark.parametrize("name", ["train_step", "input_pipeline", "epoch", "scaling",
                                  "variants", "rand_augment"])
def test_each_benchmark_runs_as_a_module(name):
    out = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("usage:"), out.stderr[-2000:]


def test_parse_variant_splits_compile_options_from_config_fields():
    assert parse_variant("shipped") == ("shipped", {}, {})
    assert parse_variant("v=xla_cpu_enable_fast_math:false;model.width:8;augment.ops:flip,x") == (
        "v", {"xla_cpu_enable_fast_math": False}, {"model.width": "8", "augment.ops": "flip,x"})
    for bad in ["=model.width:8", "v=model.width"]:
        with pytest.raises(ValueError, match="variant"):
            parse_variant(bad)


def test_set_config_field_converts_to_the_field_type_and_names_unknown_keys():
    config = base_config()
    for key, text, value in [("model.width", "8", 8), ("optim.lr", "0.5", 0.5),
                             ("data.auto_build", "False", False),
                             ("augment.ops", "flip,normalize", ("flip", "normalize")),
                             ("model.cbam_placement", "block", "block")]:
        set_config_field(config, key, text)
        assert config[key.split(".")[0]][key.split(".")[1]] == value
    with pytest.raises(KeyError, match="model.widht"):
        set_config_field(config, "model.widht", "8")
    with pytest.raises(KeyError, match="modle.width"):
        set_config_field(config, "modle.width", "8")
    with pytest.raises(ValueError, match="data.auto_build"):
        set_config_field(config, "data.auto_build", "yes")


def test_variants_benchmark_times_each_variant_and_records_them(tmp_path, monkeypatch):
    results = tmp_path / "RESULTS.md"
    monkeypatch.setattr(common, "RESULTS", results)
    variants_main(["--preset", "baseline", "--batch", "4", "--image", "32", "--steps", "1",
                   "--rounds", "2", "--warmup", "1", "tiny=model.width:4",
                   "tiny_no_fast_math=model.width:4;xla_cpu_enable_fast_math:false"])
    text = results.read_text()
    assert "### Train-step variants, preset baseline" in text
    rows = [line for line in text.splitlines() if line.startswith("| tiny")]
    assert len(rows) == 2 and rows[0].endswith("| 1.000 |"), rows
    assert "`xla_cpu_enable_fast_math=False`" in rows[1] and "`model.width=4`" in rows[1]


def test_train_step_records_what_it_timed_before_a_time_limit(tmp_path, monkeypatch):
    """gpu.sh's `timeout` ends a train_step run with SIGTERM: the rows of the presets timed
    by then still go to RESULTS.md, with a note, and the exit status is an error."""
    results = tmp_path / "RESULTS.md"
    monkeypatch.setattr(common, "RESULTS", results)
    timed = []

    def preset_row(args, preset):
        if timed:  # the second preset: the time limit strikes while it runs
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)  # the handler raises before this ends
        timed.append(preset)
        return f"| {preset} | timed |"

    monkeypatch.setattr(train_step, "_preset_row", preset_row)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit, match="after 1 of 3 presets"):
        train_step.main(["--presets", "baseline,mek,rlrcnet", "--no_torch",
                         "--torch_malloc", "default"])
    assert signal.getsignal(signal.SIGTERM) is before
    text = results.read_text()
    assert [line for line in text.splitlines() if line.endswith("| timed |")] == [
        "| baseline | timed |"]
    assert text.rstrip().endswith("Stopped by SIGTERM (a time limit) after 1 of 3 presets.")


def test_the_pytorch_process_gets_the_malloc_asked_for(tmp_path):
    library = tmp_path / "libtcmalloc_minimal.so.4"
    library.write_bytes(b"")
    ours = {"LD_PRELOAD": "/lib/libtcmalloc_minimal.so.4:/x/libprofile.so", "PATH": "/bin",
            "FERJAX_TCMALLOC": str(library)}
    default = torch_child_env("default", ours)
    assert default["LD_PRELOAD"] == "/x/libprofile.so"    # our allocator is not inherited
    assert default["FERJAX_MALLOC_TUNING"] == "0" and default["PATH"] == "/bin"
    assert torch_child_env("ferjax", ours)["FERJAX_MALLOC_TUNING"] == "1"
    assert torch_child_env("tcmalloc", ours)["LD_PRELOAD"] == f"{library}:/x/libprofile.so"
    assert "LD_PRELOAD" not in torch_child_env("default", {"LD_PRELOAD": "libjemalloc.so.2"})
    with pytest.raises(ValueError, match="'glibc'"):
        torch_child_env("glibc", ours)
    with pytest.raises(FileNotFoundError, match="libtcmalloc-minimal4"):
        torch_child_env("tcmalloc", {"FERJAX_TCMALLOC": "0"})


def test_gpu_script_runs_each_benchmark_with_its_arguments_and_keeps_the_logs(tmp_path):
    """benchmarks/gpu.sh against a stand-in python that records its arguments: each part
    calls its benchmark with the GPU settings, the wheels in .whl/ (if any) are installed
    first, every part leaves its log and RESULTS.md in $OUT, and an unknown part stops."""
    calls = tmp_path / "calls.txt"
    python = tmp_path / "python"
    python.write_text(f'#!/usr/bin/env bash\necho "$*" >> {calls}\ncat > /dev/null\n')
    python.chmod(0o755)
    out = tmp_path / "out"
    env = {"PATH": "/usr/bin:/bin", "PYTHON": str(python), "OUT": str(out), "BATCH": "32",
           "WORKERS": "3"}
    run = subprocess.run(["bash", "benchmarks/gpu.sh"], cwd=ROOT, env=env, text=True,
                         capture_output=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = [line for line in calls.read_text().splitlines() if "pip install" not in line]
    assert lines == [
        "-",  # env: the heredoc script on stdin
        "-m benchmarks.train_step --presets baseline,rul_cbam,mek,rlrcnet --batch 32 "
        "--image 224 --dtype bfloat16 --steps 20 --rounds 3",
        "-m benchmarks.epoch --preset mek --image 224 --batch 32 --dtype bfloat16 --workers 3",
        "-m benchmarks.input_pipeline --size 100 --workers 3"]
    assert sorted(p.name for p in out.iterdir()) == ["RESULTS.md", "env.log", "epoch.log",
                                                      "input.log", "step.log"]
    calls.write_text("")
    swin = subprocess.run(["bash", "benchmarks/gpu.sh", "swin"], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=60)
    assert swin.returncode == 0 and (out / "swin.log").exists(), swin.stdout + swin.stderr
    assert calls.read_text().splitlines() == [
        "-m benchmarks.train_step --presets mek_swin --batch 32 --image 112 --dtype bfloat16 "
        "--steps 20 --rounds 3", "-m benchmarks.rand_augment --batch 32 --size 112"]
    bad = subprocess.run(["bash", "benchmarks/gpu.sh", "train"], cwd=ROOT, env=env,
                         text=True, capture_output=True, timeout=60)
    assert bad.returncode == 2 and "unknown part train" in bad.stdout


HLO = """HloModule jit_train_step

%fused_computation.1 (param_0: f32[4,8], param_1: f32[8,2]) -> f32[4,2] {
  %param_0 = f32[4,8]{1,0} parameter(0)
  %param_1 = f32[8,2]{1,0} parameter(1)
  ROOT %dot.1 = f32[4,2]{1,0} dot(%param_0, %param_1), lhs_contracting_dims={1}
}

%fused_computation.2 (param_0.1: f32[4,8]) -> f32[4,8] {
  %param_0.1 = f32[4,8]{1,0} parameter(0)
  %constant.1 = f32[] constant(2)
  %broadcast.1 = f32[4,8]{1,0} broadcast(%constant.1), dimensions={}
  ROOT %multiply.1 = f32[4,8]{1,0} multiply(%param_0.1, %broadcast.1)
}

ENTRY %main (x: f32[4,8], w: f32[8,2]) -> f32[4,2] {
  %x = f32[4,8]{1,0} parameter(0)
  %w = f32[8,2]{1,0} parameter(1)
  %multiply_fusion = f32[4,8]{1,0} fusion(%x), kind=kLoop, calls=%fused_computation.2, metadata={op_name="jit(train_step)/jvp()/mul"}
  %transpose.3 = f32[2,8]{1,0} transpose(%w), dimensions={1,0}
  ROOT %ynn_fusion = f32[4,2]{1,0} fusion(%multiply_fusion, %w), kind=kCustom, calls=%fused_computation.1, metadata={op_name="jit(train_step)/jvp(dense)/dot_general"}
}
"""


def test_profile_tables_group_thunks_by_the_ops_they_fuse():
    ops = profile_step.fused_ops(HLO)
    assert profile_step.kind_of(ops["ynn_fusion"]) == "dot"
    assert profile_step.kind_of(ops["multiply_fusion"]) == "elementwise"
    assert profile_step.kind_of(ops["transpose.3"]) == "transpose"
    events = [("ynn_fusion", 3000), ("ynn_fusion", 5000), ("multiply_fusion", 1000),
              ("transpose.3", 500), ("$python frame", 9000), ("ThunkExecutor::Execute", 9000)]
    trace = {"traceEvents": [{"ph": "X", "name": n, "dur": d} for n, d in events]
             + [{"ph": "M", "name": "thread_name"}]}
    total, count = profile_step.thunk_times(trace)
    assert total == {"ynn_fusion": 8000, "multiply_fusion": 1000, "transpose.3": 500}
    table = profile_step.report(total, count, HLO, steps=2, top=2)
    assert "| dot | 4.0 | 1 |" in table and "| elementwise | 0.5 | 0 |" in table
    assert "| ynn_fusion | 4.00 | dot | f32[4,2]{1,0} | jvp(dense)/dot_general |" in table
    assert "transpose.3 |" not in table  # beyond top=2


def test_offline_wheels_bring_what_is_missing_and_what_is_too_old():
    spec = importlib.util.spec_from_file_location(
        "missing_requirements", ROOT / "launch" / "missing_requirements.py")
    missing = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(missing)
    report = {"install": [
        {"metadata": {"name": "ferjax", "version": "0.1.0", "requires_dist": [
            "flax>=0.12.8", "grain>=0.2.18", "numpy>=1.26", "pytest>=8; extra == \"test\"",
            "jax[cuda13]>=0.11; extra == \"gpu\""]}},
        {"metadata": {"name": "flax", "version": "0.12.8"}},
        {"metadata": {"name": "grain", "version": "0.2.18"}},
        {"metadata": {"name": "numpy", "version": "2.4.6"}},
        {"metadata": {"name": "pytest", "version": "9.0.1"}},
        {"metadata": {"name": "dm_tree", "version": "0.1.10"}},
        {"metadata": {"name": "protobuf", "version": "6.1"}}]}
    have = missing.parse_have(["Flax==0.10.0", "numpy==2.5.2", "pytest==7.4.0", "protobuf==3.0",
                               "dm-tree", "# comment", ""])
    assert have["flax"] == "0.10.0" and have["dm-tree"] is None
    assert missing.to_fetch(report, have) == [
        "flax==0.12.8  # replaces 0.10.0",    # a direct requirement, too old
        "grain==0.2.18",                      # missing
        "pytest==9.0.1  # replaces 7.4.0"]    # the test extra counts; protobuf is indirect
