"""The benchmark scripts' own arithmetic (their runs are too long for the suite)."""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from test_kernels import require_native_kernels

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as an import does: dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def accuracy_row(variant: str, seed: int, top1: float) -> dict:
    return {"variant": variant, "seed": seed, "test_top1": top1, "epochs": 15, "wall_s": 400.0, "mean_epoch_s": 25.0,
            "threads": 1}


def test_bench_accuracy_takes_each_gap_against_full_precision_of_the_same_seed():
    bench = load_script("bench_accuracy")
    rows = [accuracy_row("full precision", 0, 0.92), accuracy_row("BWN", 0, 0.915), accuracy_row("XNOR-Net", 0, 0.90),
            accuracy_row("full precision", 1, 0.93), accuracy_row("BWN", 1, 0.92), accuracy_row("XNOR-Net", 1, 0.91)]
    lines = bench.markdown(rows, 2).splitlines()
    assert "| XNOR-Net | 0 | 90.00% | -2.00 pt | 15 | 400 | 25.0 |" in lines
    assert "| BWN | 1 | 92.00% | -1.00 pt | 15 | 400 | 25.0 |" in lines
    # the table over seeds: mean, range, and the mean of the per-seed gaps
    assert "| full precision | 2 | 92.50% | 92.00% - 93.00% | +0.00 pt |" in lines
    assert "| BWN | 2 | 91.75% | 91.50% - 92.00% | -0.75 pt |" in lines
    assert "| XNOR-Net | 2 | 90.50% | 90.00% - 91.00% | -2.00 pt |" in lines


def test_bench_accuracy_gives_the_distilled_rows_and_the_teacher_time_on_its_own_line():
    bench = load_script("bench_accuracy")
    rows = [accuracy_row("full precision", 0, 0.92), accuracy_row("XNOR-Net", 0, 0.90),
            accuracy_row("XNOR-Net distilled", 0, 0.915)]
    rows[0]["wall_s"] = 321.0
    lines = bench.markdown(rows, 2).splitlines()
    assert "| XNOR-Net distilled | 0 | 91.50% | -0.50 pt | 15 | 400 | 25.0 |" in lines
    assert "The runs that start from or distil from full precision wait for it; it trained in 321 s (seed 0)." in lines
    assert lines[-1].startswith("2 run(s) at a time, 1 thread(s) each, on ")
    assert bench.with_seed_dir(bench.VARIANTS["BWN distilled"].sets, Path("out/seed0")) == [
        "binop.enabled=true", "binop.activations=none", "optim.lr=0.002",
        "distill.teacher=out/seed0/full_precision/last.pt", "distill.weight=0.5", "distill.temperature=1.0"]


def test_bench_accuracy_takes_the_resnet_gaps_against_the_resnet_twin_and_chains_the_stages():
    bench = load_script("bench_accuracy")
    rows = [accuracy_row("full precision", 0, 0.92), accuracy_row("ResNet-20 float twin", 0, 0.93),
            accuracy_row("ResNet-20 ReActNet two-stage", 0, 0.925),
            accuracy_row("ResNet-20 ReActNet one-stage", 0, 0.91)]
    lines = bench.markdown(rows, 1).splitlines()
    assert "| ResNet-20 ReActNet two-stage | 0 | 92.50% | -0.50 pt | 15 | 400 | 25.0 |" in lines
    assert "| ResNet-20 ReActNet one-stage | 0 | 91.00% | -2.00 pt | 15 | 400 | 25.0 |" in lines
    assert bench.with_seed_dir(bench.VARIANTS["ResNet-20 ReActNet two-stage"].sets, Path("s0")) == [
        "data.train_subset=12000", "model.init_from=s0/resnet-20_stage_1/last.pt",
        "distill.teacher=s0/resnet-20_float/last.pt"]
    two, one = bench.VARIANTS["ResNet-20 ReActNet two-stage"], bench.VARIANTS["ResNet-20 ReActNet one-stage"]
    stage1 = bench.VARIANTS["ResNet-20 stage 1"]
    assert one.config == two.config and one.epochs == two.epochs + stage1.epochs  # same recipe, same total epochs
    assert two.twin == one.twin == bench.RESNET_TWIN and bench.VARIANTS[one.twin].epochs == one.epochs


def test_bench_accuracy_runs_each_shipped_config_with_its_own_epochs_and_size(monkeypatch, tmp_path):
    bench = load_script("bench_accuracy")
    commands = []

    def fake_train(cmd, check, env):
        commands.append(cmd)
        settings = dict(cmd[i + 1].split("=", 1) for i, arg in enumerate(cmd) if arg == "--set")
        out = Path(settings["train.out_dir"])
        out.mkdir(parents=True)
        (out / "metrics.jsonl").write_text('{"val_acc1": 0.9, "epoch_time_s": 1.0}\n')

    monkeypatch.setattr(bench.subprocess, "run", fake_train)
    row = bench.run_variant("ResNet-20 ReActNet two-stage", 2, 15, False, tmp_path, 1)
    cmd = commands[0]
    assert cmd[cmd.index("--config") + 1].endswith("configs/fashion_mnist_resnet.yaml")
    assert "train.epochs=3" in cmd and "train.seed=2" in cmd and row["epochs"] == 3
    assert f"model.init_from={tmp_path}/seed2/resnet-20_stage_1/last.pt" in cmd
    assert "data.train_subset=12000" in cmd  # the benchmark's size
    quick = bench.run_variant("ResNet-20 float", 0, 15, True, tmp_path, 1)
    subsets = [arg for arg in commands[1] if arg.startswith("data.train_subset=")]
    assert quick["epochs"] == 1 and subsets[-1] == f"data.train_subset={bench.QUICK_SUBSET}"  # the last one wins
    assert bench.run_variant("XNOR-Net", 0, 15, False, tmp_path, 1)["epochs"] == 15  # --epochs


def test_bench_accuracy_runs_the_teachers_first_and_each_student_after_its_own(monkeypatch, tmp_path):
    import threading
    import time

    bench = load_script("bench_accuracy")
    finished, lock = [], threading.Lock()

    def fake_run(name, seed, epochs, quick, out_dir, threads):
        for needed in bench.VARIANTS[name].needs:
            assert (seed, needed) in finished  # its teacher's or first stage's run is complete
        time.sleep(0.05 if name in (bench.FULL_PRECISION, "ResNet-20 stage 1") and seed == 1 else 0.0)  # slow
        with lock:
            finished.append((seed, name))
        return {"variant": name, "seed": seed, "threads": threads}

    monkeypatch.setattr(bench, "run_variant", fake_run)
    names = list(bench.VARIANTS)
    rows = bench.run_all(names, [0, 1], 15, False, tmp_path, jobs=3)
    assert [(r["seed"], r["variant"]) for r in rows] == [(seed, name) for seed in (0, 1) for name in names]
    assert finished.index((1, bench.FULL_PRECISION)) < finished.index((1, "XNOR-Net distilled"))
    assert finished.index((1, "ResNet-20 stage 1")) < finished.index((1, "ResNet-20 ReActNet two-stage"))


def test_bench_accuracy_groups_bring_the_rows_they_start_from_or_compare_against():
    bench = load_script("bench_accuracy")
    reactnet = [name for name, v in bench.VARIANTS.items() if v.group == "lenet5-reactnet"]
    assert bench.with_prerequisites(reactnet) == [bench.FULL_PRECISION, *reactnet]
    assert bench.with_prerequisites(["XNOR-Net ReActNet two-stage"]) == [
        bench.FULL_PRECISION, bench.LENET_STAGE1, "XNOR-Net ReActNet two-stage"]
    resnet = [name for name, v in bench.VARIANTS.items() if v.group == "resnet20"]
    assert bench.with_prerequisites(resnet) == resnet  # the ResNet rows' twin is a ResNet row
    two, one = bench.VARIANTS["XNOR-Net ReActNet two-stage"], bench.VARIANTS["XNOR-Net ReActNet one-stage"]
    assert one.config == two.config and one.epochs == two.epochs + bench.VARIANTS[bench.LENET_STAGE1].epochs


def test_bench_accuracy_has_no_table_over_seeds_for_one_seed():
    bench = load_script("bench_accuracy")
    rows = [accuracy_row("full precision", 3, 0.92), accuracy_row("BWN", 3, 0.91), accuracy_row("XNOR-Net", 3, 0.90)]
    table = bench.markdown(rows, 2)
    assert "mean test top-1" not in table
    assert "| BWN | 3 | 91.00% | -1.00 pt |" in table


def test_results_page_names_the_date_machine_torch_and_each_command():
    import datetime
    import os

    results = load_script("results")
    command = results.command_of("binop", quick=True)
    text = results.section("binop", command, "LeNet-5 eager 1.02", 90.0, datetime.datetime(2026, 1, 2, 3, 4),
                           results.machine())
    assert "`python scripts/bench_binop.py --quick` (1.5 min, 2026-01-02 03:04 UTC" in text
    assert "LeNet-5 eager 1.02" in text
    assert f"torch {torch.__version__}" in text and f"{os.cpu_count()} cores" in text
    assert results.command_of("accuracy", quick=False)[1:] == ["scripts/bench_accuracy.py", "--only", "lenet5",
                                                                "--seeds", "0", "1", "2", "--jobs", "2"]


def test_results_replaces_the_sections_it_runs_and_keeps_the_others(monkeypatch, tmp_path):
    results = load_script("results")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "accuracy.md").write_text("## Accuracy, kept\n")
    (tmp_path / "results" / "binop.md").write_text("## BinOp, old\n")
    monkeypatch.setattr(results, "run_benchmark", lambda command, json_path: f"output of {command[-2]}")
    monkeypatch.setattr(sys, "argv", ["results.py", "--quick", "--only", "inference", "binop", "--out",
                                      str(tmp_path / "results.md")])
    results.main()
    page = (tmp_path / "results.md").read_text()
    assert "BinOp, old" not in page and "output of scripts/bench_binop.py" in page
    order = [page.index(text) for text in ("Accuracy, kept", "bench_binop.py", "bench_inference.py")]
    assert order == sorted(order)  # the page's fixed order, not the order of --only


def test_bench_binop_rotates_which_trainer_starts_each_round():
    bench = load_script("bench_binop")
    order = []
    steps = {name: (lambda x, y, name=name: order.append(name)) for name in ("plain", "binop")}
    faults = {}
    times = bench.alternate(steps, None, None, rounds=3, faults=faults)
    assert order == ["plain", "binop", "binop", "plain", "plain", "binop"]
    assert [len(t) for t in times.values()] == [3, 3]
    assert [len(f) for f in faults.values()] == [3, 3]


def test_bench_binop_counts_the_page_faults_of_fresh_memory():
    import mmap

    bench = load_script("bench_binop")
    pages = mmap.mmap(-1, 64 * 2**20)  # 64 MiB of fresh anonymous memory: each page faults on first touch
    block = torch.frombuffer(pages, dtype=torch.uint8)
    before = bench.minor_faults()
    block.fill_(1)
    fresh = bench.minor_faults() - before
    before = bench.minor_faults()
    block.add_(1)  # the same pages again: mapped already
    assert fresh > 0 and bench.minor_faults() - before < fresh
    del block
    pages.close()


def test_bench_binop_ratio_is_the_median_of_paired_ratios():
    bench = load_script("bench_binop")
    assert bench.paired_ratio([1.1, 3.0, 2.2], [1.0, 1.0, 2.0]) == 1.1  # pairs 1.1, 3.0, 1.1


def test_bench_binop_prints_the_ratio_and_the_heap(capsys, monkeypatch):
    bench = load_script("bench_binop")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1073741824")
    (result,) = bench.main(["--models", "lenet5", "--modes", "eager", "--rounds", "2"])
    assert result["ratio"] > 0 and result["rounds"] == 2
    out = capsys.readouterr().out.splitlines()
    (row,) = [line for line in out if line.startswith("| lenet5 | 128 | eager |")]
    assert row.endswith(f"| {result['ratio']:.3f} | "
                        f"{result['plain_faults_per_step']:.0f} / {result['binop_faults_per_step']:.0f} |")
    assert "heap: GLIBC_TUNABLES=glibc.malloc.trim_threshold=1073741824" in out
    monkeypatch.delenv("GLIBC_TUNABLES")
    assert bench.heap().startswith("glibc's default")


def test_bench_compile_times_the_stage_two_students_own_step_without_the_runs_it_names(monkeypatch, tmp_path):
    """The shipped stage-2 config names stage 1's checkpoint and the teacher's, which do not
    exist here: the step is built without them, on a batch of the config's size and shape."""
    monkeypatch.syspath_prepend(str(SCRIPTS))  # it imports bench_binop, as when run from scripts/
    bench = load_script("bench_compile")
    step, x, y = bench.trainer_step("fashion_mnist_resnet", compiled=False, out_dir=tmp_path)
    assert x.shape == (128, 1, 28, 28) and y.shape == (128,)
    loss, _, skipped = step(x, y)
    assert torch.isfinite(loss) and not skipped


def test_bench_compile_speedup_is_the_median_of_eager_over_compiled_pairs(monkeypatch, capsys, tmp_path):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    bench = load_script("bench_compile")
    monkeypatch.setattr(bench, "trainer_step", lambda name, compiled, out_dir: (lambda x, y: None, None, [0] * 128))
    monkeypatch.setattr(bench, "alternate", lambda steps, x, y, rounds: {"eager": [3.0, 4.0, 2.0],
                                                                       "compiled": [1.0, 2.0, 2.0]})
    (result,) = bench.main(["--configs", "fashion_mnist_lenet", "--rounds", "3", "--out-dir", str(tmp_path)])
    # pairs 3, 2 and 1: their median, not the medians' ratio 3 / 2
    assert result["speedup"] == 2.0 and result["spread"] == [1.0, 3.0] and result["batch"] == 128
    assert "| fashion_mnist_lenet | 128 | 3000.0 | 2000.0 | 2.00 | 1.00, 3.00 |" in capsys.readouterr().out


def test_bench_eval_passes_differ_only_in_the_batch(monkeypatch, tmp_path):
    """The shipped ResNet's evaluation pass at each size sees the same model and images, so
    the metrics agree; the images have the config's data shape."""
    monkeypatch.syspath_prepend(str(SCRIPTS))  # it imports bench_binop, as when run from scripts/
    bench = load_script("bench_eval")
    monkeypatch.setattr(bench, "EVAL_IMAGES", 40)
    real_evaluate, shapes = bench.evaluate, []
    monkeypatch.setattr(bench, "evaluate", lambda model, split, *args: shapes.append(
        [tuple(x.shape) for x, _ in split.batches(0)]) or real_evaluate(model, split, *args))
    passes = bench.evaluation_passes(bench.CONFIGS_DIR / "fashion_mnist_resnet.yaml", [40, 16, 7], tmp_path)
    metrics = {batch: run_pass(None, None) for batch, run_pass in passes.items()}
    assert shapes[0] == [(40, 1, 28, 28)] and [s[0] for s in shapes[1]] == [16, 16, 8]
    assert [s[0] for s in shapes[2]] == [7] * 5 + [5]
    for batch in (16, 7):
        for name in ("val_loss", "val_acc1", "val_acc5"):
            assert metrics[batch][name] == pytest.approx(metrics[40][name], rel=1e-5, abs=1e-6), (batch, name)


def test_bench_eval_ratio_is_against_the_configs_own_batch_round_by_round(monkeypatch, capsys, tmp_path):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    bench = load_script("bench_eval")
    monkeypatch.setattr(bench, "evaluation_passes", lambda path, batches, out_dir: dict.fromkeys(batches))
    # fashion_mnist_lenet evaluates at 1000: it is timed, and the baseline, though not asked for
    monkeypatch.setattr(bench, "alternate", lambda passes, x, y, rounds: {128: [1.0, 2.0, 6.0],
                                                                           1000: [4.0, 2.0, 3.0]})
    (result,) = bench.main(["--configs", "fashion_mnist_lenet", "--batches", "128", "--rounds", "3",
                            "--out-dir", str(tmp_path)])
    # rounds 0.25, 1 and 2: their median, not the medians' ratio 2 / 3
    assert result["own_batch"] == 1000 and result["vs_own"] == {128: 1.0, 1000: 1.0}
    assert result["pass_s"] == {128: 2.0, 1000: 3.0}
    out = capsys.readouterr().out
    assert "| fashion_mnist_lenet | 128 | 2.00 | 1.00 |" in out
    assert "| fashion_mnist_lenet | 1000 (the config's) | 3.00 | 1.00 |" in out


def test_results_runs_each_benchmark_under_the_default_environment(monkeypatch, tmp_path):
    results = load_script("results")
    command = results.command_of("binop", quick=False)
    assert command == ["python", "scripts/bench_binop.py"]
    runs = []
    monkeypatch.setattr(results.subprocess, "run", lambda argv, **kwargs: runs.append((argv, kwargs)) or
                        subprocess.CompletedProcess(argv, 0, stdout="table\n", stderr=""))
    assert results.run_benchmark(command, tmp_path / "binop.json") == "table"
    ((argv, kwargs),) = runs
    assert argv == [sys.executable, "scripts/bench_binop.py", "--json", str(tmp_path / "binop.json")]
    assert "env" not in kwargs
    assert results.command_of("epoch", quick=True) == ["python", "scripts/bench_epoch.py", "--quick"]


def test_bench_inference_percentiles_interpolate_between_the_nearest_ranks():
    bench = load_script("bench_inference")
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert bench.percentile(values, 50) == statistics.median(values) == 3.0
    assert bench.percentile(values, 90) == pytest.approx(4.6)  # rank 3.6 of 0..4: 4 + 0.6 * (5 - 4)
    assert bench.percentile([10.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert (bench.percentile(values, 0), bench.percentile(values, 100), bench.percentile([7.0], 90)) == (1.0, 5.0, 7.0)


def test_bench_inference_peers_without_the_native_kernels_is_one_usage_error():
    """--peers times the compiled package, which calls the kernels: without them it stops at once."""
    done = subprocess.run([sys.executable, str(SCRIPTS / "bench_inference.py"), "--peers"], capture_output=True,
                          text=True, env={**os.environ, "XNORTRAIN_NO_KERNELS": "1"})
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines()[-1].endswith(
        "error: --peers times the compiled package, which needs the native kernels: XNORTRAIN_NO_KERNELS is set")


def test_bench_inference_peers_ratios_take_the_fastest_fp32_runtime_over_the_kernels():
    bench = load_script("bench_inference")
    p50 = {"PyTorch float path": 20.0, "xnortrain kernels": 5.0, bench.COMPILED: 4.0, bench.AOT_PACKAGE: 2.5,
           "onnxruntime FP32": 10.0, "OpenVINO FP32": 12.0, "OpenVINO default": 4.0,
           "onnxruntime INT8": 2.0}  # INT8 and bf16 are no FP32 runtime
    rows = [{"runtime": runtime, "p50_ms": ms} for runtime, ms in p50.items()]
    assert bench.peer_ratios(rows) == {"best_fp32": "onnxruntime FP32", "best_fp32_over_kernels": 2.0,
                                       "best_fp32_over_compiled": 2.5, "best_fp32_over_aot": 4.0,
                                       "openvino_default_over_kernels": 0.8, "openvino_default_over_compiled": 1.0,
                                       "openvino_default_over_aot": 1.6}


def test_interleaved_rounds_time_each_runtime_after_its_own_untimed_calls_in_shuffled_orders():
    """Each turn is WARMUP_CALLS untimed calls, then TIMED_CALLS timed ones of the same call, so
    that every runtime is timed warm, as in a process of its own; the turns' order changes from
    round to round."""
    bench = load_script("bench_inference")
    calls = []
    times = bench.interleaved_times({k: partial(calls.append, k) for k in "abc"}, repeats=30)
    turn = bench.WARMUP_CALLS + bench.TIMED_CALLS
    turns = [calls[i:i + turn] for i in range(0, len(calls), turn)]
    assert bench.WARMUP_CALLS >= 5 and len(turns) == 90 and all(len(set(t)) == 1 and len(t) == turn for t in turns)
    rounds = [[t[0] for t in turns[i:i + 3]] for i in range(0, 90, 3)]
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds)
    assert all(len(t) == 30 * bench.TIMED_CALLS for t in times.values())
    assert {r[0] for r in rounds} == {r[-1] for r in rounds} == {"a", "b", "c"}


def test_bench_processes_gives_the_spread_of_process_medians_and_the_worst_p90_over_p50(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(SCRIPTS))  # it imports bench_inference, as when run from scripts/
    bench = load_script("bench_processes")
    run = {"float path": {"p50": 5.0, "p90": 6.0}, "kernels": {"p50": 2.0, "p90": 2.2},
           "python loop": {"p50": 9.0, "p90": 9.9}, "package": {"p50": 1.0, "p90": 1.1}}
    slower = {"float path": {"p50": 6.0, "p90": 6.6}, "kernels": {"p50": 2.5, "p90": 3.5},
              "python loop": {"p50": 9.9, "p90": 10.9}, "package": {"p50": 1.2, "p90": 1.5}}
    summary = bench.print_model("nin", [run, slower])
    assert summary["kernels"] == {"process_spread": 1.25, "worst_p90_over_p50": 1.4}
    assert summary["package"] == {"process_spread": 1.2, "worst_p90_over_p50": 1.25}
    assert summary["python loop"]["process_spread"] == pytest.approx(1.1)
    printed = capsys.readouterr().out
    assert "| process | float path | kernels | package | python loop | float / kernels |" in printed
    assert "| 2 | 6.00 (1.10) | 2.50 (1.40) | 1.20 (1.25) | 9.90 (1.10) | 2.40x |" in printed
    without_package = [{k: v for k, v in r.items() if k != "package"} for r in (run, slower)]
    assert set(bench.print_model("nin", without_package)) == {"float path", "kernels", "python loop"}


def test_bench_processes_runs_every_process_on_the_threads_asked_for(tmp_path):
    """The fresh process takes --threads, not the number torch would give it by default, and
    times the package compiled before it started."""
    require_native_kernels()
    threads = 1 if torch.get_num_threads() > 1 else 2
    out = tmp_path / "processes.json"
    printed = subprocess.run([sys.executable, str(SCRIPTS / "bench_processes.py"), "--models", "lenet5",
                              "--processes", "1", "--repeats", "2", "--threads", str(threads), "--json", str(out)],
                             check=True, capture_output=True, text=True).stdout
    runs = json.loads(out.read_text())["models"]["lenet5"]["processes"]
    assert f", {threads} threads, 1 processes a model" in printed
    assert [run["threads"] for run in runs] == [threads]
    assert set(runs[0]) == {"float path", "kernels", "package", "python loop", "threads"}  # the package compiled


def test_bench_inference_times_linked_binary_convs_as_one_run_against_the_float_work_they_replace(tmp_path,
                                                                                                  monkeypatch):
    """NIN's binary convs pass their signs packed in two runs (the first through a max pool);
    each run's float side holds the float layers and the ReLUs, BatchNorms and pools between
    them, and both sides give the same output."""
    from xnortrain.deploy import load_exported

    require_native_kernels()
    monkeypatch.syspath_prepend(str(SCRIPTS))
    bench = load_script("bench_inference")
    _, exported = bench.export_one("nin", tmp_path)
    float_model, fast_model = load_exported(exported), load_exported(exported, binary_kernels=True)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    segments = bench.binary_segments(float_model, fast_model, x)
    names = {id(m): name for name, m in float_model.named_modules()}
    assert [[names[id(m)] for m in f] for f, *_ in segments] == [
        ["block2.conv", "block2.relu", "block3.norm", "block3.conv", "block3.relu", "pool3", "block4.norm",
         "block4.conv", "block4.relu", "block5.norm", "block5.conv", "block5.relu", "block6.norm", "block6.conv"],
        ["block7.conv", "block7.relu", "block8.norm", "block8.conv"]]
    # binary MACs: 1x1 192->160 and 160->96 at 32x32, 5x5 96->192 and two 1x1 192->192 at 16x16,
    # 3x3 and 1x1 192->192 at 8x8
    assert [m for *_, m in segments] == [1024 * (192 * 160 + 160 * 96) + 256 * (96 * 25 * 192 + 2 * 192 * 192),
                                         64 * (192 * 9 * 192 + 192 * 192)]
    with torch.no_grad():
        for float_modules, fast_modules, signs, _ in segments:
            torch.testing.assert_close(bench.run_in_turn(fast_modules, signs), bench.run_in_turn(float_modules, signs),
                                       rtol=1e-4, atol=1e-4)


def test_bench_fusions_loads_the_export_with_every_fusion_and_without_each_in_turn(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    bench = load_script("bench_fusions")
    loads, packages = [], []
    monkeypatch.setattr(bench, "load_exported", lambda path, **kwargs: loads.append(kwargs) or len(loads))
    monkeypatch.setattr(bench, "exported_spec", lambda path: {"input_shape": [3]})
    monkeypatch.setattr(bench, "package_model", lambda model, shape, path: packages.append((model, shape, path.name)))
    monkeypatch.setattr(bench, "load_package", lambda path: f"loaded {path.name}")
    models = bench.variants(tmp_path / "m.xnor.pt", aot=True)
    assert loads == [{"binary_kernels": True}, {"binary_kernels": True, "fold_batchnorms": False},
                     {"binary_kernels": True, "fuse_signs": False}, {"binary_kernels": True, "fuse_residuals": False}]
    assert packages == [(1, [3], "every fusion.pt2"), (4, [3], "without fuse_residuals.pt2")]
    assert models == {"every fusion": 1, "without fold_batchnorms": 2, "without fuse_signs": 3,
                      "without fuse_residuals": 4, "every fusion, AOTInductor": "loaded every fusion.pt2",
                      "without fuse_residuals, AOTInductor": "loaded without fuse_residuals.pt2"}
