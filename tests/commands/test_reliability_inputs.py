"""Issue 27: reliability, round two. No exit 0 with a number computed from mismatched inputs, no
stale results after an input changed, no traceback or locked run directory after a failed start.
One test (or more) per item of the issue's "What to build"; each fails on the code before the
fix. Runs on copies of the shared tiny run (never on the run itself)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from qgeom.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def refused(res, *needles: str) -> None:
    """Exit 1, one ``Error:`` line holding every needle, no traceback."""
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and isinstance(res.exception, SystemExit), res.output
    errors = [x for x in res.output.splitlines() if x.startswith("Error:")]
    assert len(errors) == 1 and all(n in errors[0] for n in needles), res.output


def image_folder(root: Path, classes: int, per_class: int = 10) -> Path:
    """A flat ImageFolder ``root/<class>/<image>.png`` of small solid-colour images."""
    from PIL import Image

    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (8, 8), (40 * c, 7 * i, 100)).save(root / f"c{c}" / f"{i}.png")
    return root


@pytest.fixture
def run_copy(tiny_run: Path, tmp_path: Path) -> Path:
    d = tmp_path / "run"
    shutil.copytree(tiny_run, d)
    return d


# -- 1. a checkpoint and a task must fit, in every command that reads both ---------------------------------


def test_a_head_that_does_not_fit_the_task_is_refused_by_every_command(tiny_run: Path, tmp_path: Path) -> None:
    from qgeom.models import create_model

    ck = tmp_path / "three.pth"  # a timm-format 3-class checkpoint (no qgeom metadata)
    torch.save(create_model("micro", 3, seed=0).state_dict(), ck)
    data = f"imagefolder:two={image_folder(tmp_path / 'two', 2)}"
    rho = tiny_run / "seed0/qat2/rho_shape.safetensors"
    same = ["--model", "micro", "--data", data]
    commands = {
        "geometry": ["geometry", ck, rho, rho, *same, "--n-probe", "4"],
        "spectrum": ["spectrum", ck, *same, "--n-probe", "4", "--k", "1"],
        "check-invariance": ["check-invariance", "--checkpoint", ck, *same, "--n-probe", "4", "--levels", "function"],
        "evaluate": ["evaluate", ck, *same],
        "qat": ["qat", "--finetuned", ck, *same, "--out", tmp_path / "q.safetensors", "--steps", "1"],
    }
    for name, args in commands.items():
        refused(invoke(*args), f"{ck} has a 3-class head but task two has 2 classes")
    assert not (tmp_path / "q.safetensors").exists()


def test_a_head_trained_for_another_task_of_the_same_size_is_refused(tiny_run: Path) -> None:
    shape = tiny_run / "seed0/finetune/shape.safetensors"  # shape and position: 4 classes each
    rho = tiny_run / "seed0/qat2/rho_shape.safetensors"
    for args in (["geometry", shape, rho, rho, "--data", "position", "--n-probe", "4"],
                 ["evaluate", shape, "--data", "position"],
                 ["check-invariance", "--checkpoint", shape, "--data", "position", "--n-probe", "4",
                  "--levels", "function"]):
        refused(invoke(*args), f"{shape} was trained for task shape", "not for task position")
    res = invoke("evaluate", shape, "--data", "shape")  # its own task, named: fine
    assert res.exit_code == 0, res.output


# -- 2. a resumed run never reports results computed from other inputs ------------------------------------


def _edit_config(run: Path, **changes) -> None:
    cfg = json.loads((run / "config.json").read_text())
    for key, value in changes.items():
        outer, _, inner = key.partition(".")
        if inner:
            cfg[outer][inner] = value
        else:
            cfg[outer] = value
    (run / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))


def test_a_hand_edited_config_is_refused_even_with_the_matching_override(run_copy: Path) -> None:
    before = (run_copy / "accuracy.csv").read_bytes()
    _edit_config(run_copy, **{"finetune.steps": 12})
    refused(invoke("run", "tiny", "finetune.steps=12", "--run-dir", run_copy),
            f"{run_copy / 'config.json'} was edited since the run recorded it (differs in: finetune)")
    assert (run_copy / "accuracy.csv").read_bytes() == before


def test_a_run_of_an_older_qgeom_resumes_when_the_config_gained_fields(run_copy: Path) -> None:
    """Fields added to RunConfig since a run was made count as their defaults — in config.json and
    in the record of inputs.json alike — so the run resumes; a recorded value that differs is refused."""
    before = (run_copy / "accuracy.csv").read_bytes()
    for name in ("config.json", "inputs.json"):  # as written before issue 24 added these fields
        doc = json.loads((run_copy / name).read_text())
        cfg = doc if name == "config.json" else doc["config"]
        for key in ("ptq", "act_bits", "vector_source", "calib_size"):
            cfg.pop(key)
        (run_copy / name).write_text(json.dumps(doc, indent=2, sort_keys=True))
    res = invoke("run", "tiny", "--run-dir", run_copy, "--quiet")
    assert res.exit_code == 0, res.output
    assert (run_copy / "accuracy.csv").read_bytes() == before
    doc = json.loads((run_copy / "inputs.json").read_text())
    doc["config"]["ptq"] = ["rtn", "gptq"]  # recorded with another value than config.json's: refused
    (run_copy / "inputs.json").write_text(json.dumps(doc, indent=2, sort_keys=True))
    refused(invoke("run", "tiny", "--run-dir", run_copy), "was edited since the run recorded it (differs in: ptq)")


def test_a_run_written_before_inputs_were_recorded_resumes_and_is_checked(run_copy: Path) -> None:
    (run_copy / "inputs.json").unlink()  # as a run written by qgeom before issue 27
    edited = run_copy.parent / "edited"
    shutil.copytree(run_copy, edited)
    _edit_config(edited, **{"finetune.steps": 12})  # its checkpoints' own metadata still say 10 steps
    refused(invoke("run", "tiny", "finetune.steps=12", "--run-dir", edited),
            "finetune/", "was computed with another training configuration than the run's (steps 10 → 12)")
    from qgeom import io as qio

    ft = run_copy / "seed0/finetune/hue.safetensors"  # as written by a qgeom without the optimizer field
    theta, meta = qio.load_params(ft)
    qio.save_params(ft, theta, meta | {"config": json.dumps({k: v for k, v in json.loads(meta["config"]).items()
                                                              if k != "optimizer"})})
    res = invoke("run", "tiny", "--run-dir", run_copy, "--format", "csv")
    assert res.exit_code == 0, res.output
    record = json.loads((run_copy / "inputs.json").read_text())  # recorded from then on
    assert record["config"]["finetune"]["steps"] == 10
    assert "seed0/eval2/hue.csv" in record["artifacts"] and "theta0.safetensors" in record["artifacts"]["seed0/finetune/hue.safetensors"]["inputs"]


def test_a_replaced_artifact_is_refused_naming_it(run_copy: Path) -> None:
    shutil.copy(run_copy / "seed0/finetune/shape.safetensors", run_copy / "seed0/finetune/hue.safetensors")
    refused(invoke("run", "tiny", "--run-dir", run_copy),
            f"{run_copy / 'seed0/finetune/hue.safetensors'} is not the file this run computed")
    shutil.copy(run_copy / "seed0/finetune/shape.safetensors", run_copy / "seed0/finetune/hue.safetensors")


def test_a_replaced_theta0_file_is_refused(run_copy: Path, tmp_path: Path) -> None:
    from qgeom import io as qio
    from qgeom.experiment.config import with_overrides
    from qgeom.experiment.presets import preset
    from qgeom.experiment.transfer import TransferRun

    def backbone(src: Path, dst: Path) -> Path:
        theta, _ = qio.load_params(src)
        qio.save_params(dst, {k: v for k, v in theta.items() if not k.startswith("head.")})
        return dst

    theta0 = backbone(run_copy / "theta0.safetensors", tmp_path / "theta0.safetensors")
    cfg = with_overrides(preset("tiny"), [f"theta0={theta0}", "controls=negated"])
    run = tmp_path / "from_file"
    run.mkdir()
    shutil.copy(theta0, run / "theta0.safetensors")  # what the run saved from the file
    (run / "config.json").write_text(cfg.to_json())
    assert TransferRun(cfg, run, claim=False).preflight()  # the same file: accepted
    backbone(run_copy / "other" / "theta0.safetensors", theta0)  # replaced by another θ_0
    refused(invoke("run", "tiny", f"theta0={theta0}", "controls=negated", "--run-dir", run),
            f"theta0: {theta0} is not the θ_0 this run was computed from")


def test_changed_data_of_a_streamed_task_is_refused(tmp_path: Path) -> None:
    from qgeom.data import fingerprint
    from qgeom.experiment import provenance
    from qgeom.experiment.presets import preset

    folder = image_folder(tmp_path / "two", 2)
    spec = f"imagefolder:two={folder}"
    first = fingerprint(spec)
    assert first == fingerprint(spec) and fingerprint("shape") is None
    image_folder(tmp_path / "two" / "extra", 1, per_class=1)  # one image more
    assert fingerprint(spec) != first
    run = tmp_path / "run"
    run.mkdir()
    provenance.sync(run, preset("tiny"), {"two": first})
    with pytest.raises(provenance.StaleInputsError, match="the data of task two changed since this run read it"):
        provenance.sync(run, preset("tiny"), {"two": fingerprint(spec)})


# -- 3. a vector must cover the scope it is used in, in every command ---------------------------------------


def test_a_vector_lacking_a_tensor_is_refused_unless_allowed_and_then_said(tiny_run: Path, tmp_path: Path) -> None:
    from qgeom import io as qio

    receiver = tiny_run / "seed0/finetune/hue.safetensors"
    full = tiny_run / "seed0/qat2/rho_shape.safetensors"
    rho, meta = qio.load_params(full)
    partial, twin = tmp_path / "partial.safetensors", tmp_path / "twin.safetensors"
    for path in (partial, twin):  # two vectors that agree with each other, both short of one tensor
        qio.save_params(path, {k: v for k, v in rho.items() if k != "blocks.1.mlp.fc2.weight"}, meta)
    for scope in ([], ["--scope", "backbone"]):
        refused(invoke("geometry", receiver, partial, twin, "--n-probe", "4", *scope),
                f"{partial}: the vector covers", "missing: blocks.1.mlp.fc2.weight")
    refused(invoke("check-invariance", "--checkpoint", receiver, "--rho-d", partial, "--rho-r", twin,
                   "--n-probe", "4", "--levels", "geometry", "--metrics", "ggn", "--symmetry", "head_permutation"),
            f"{partial}: the vector covers", "missing: blocks.1.mlp.fc2.weight")
    res = invoke("geometry", receiver, partial, twin, "--n-probe", "4", "--allow-partial", "--out-dir", tmp_path / "g")
    assert res.exit_code == 0, res.output
    assert f"warning: {partial} is partial (--allow-partial)" in " ".join(res.output.split())
    info = json.loads((tmp_path / "g" / "geometry.json").read_text())["info"]
    assert len(info["partial_vectors"]) == 2 and "blocks.1.mlp.fc2.weight" in info["partial_vectors"][0]
    res = invoke("geometry", receiver, full, full, "--n-probe", "4")  # whole vectors: nothing said
    assert res.exit_code == 0 and "partial" not in res.output, res.output


# -- 4. tasks are checked before training ---------------------------------------------------------------------


def test_a_single_class_task_is_refused_before_training(tiny_run: Path, tmp_path: Path) -> None:
    one = f"imagefolder:one={image_folder(tmp_path / 'one', 1)}"
    out = tmp_path / "ft.safetensors"
    refused(invoke("finetune", "--pretrained", tiny_run / "theta0.safetensors", "--data", one, "--out", out,
                   "--steps", "1"), "task one has 1 class (c0): a classifier needs at least 2")
    assert not out.exists()
    run = tmp_path / "run"
    refused(invoke("run", "tiny", f"tasks=shape,{one}", "--run-dir", run), "task one has 1 class")
    assert not run.exists()  # nothing written: the corrected command may use the directory


def test_an_undecodable_image_or_mismatched_classes_are_found_before_training(tiny_run: Path, tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "bad", 2)
    (folder / "c1" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image at all")
    bad, run, out = f"imagefolder:bad={folder}", tmp_path / "run", tmp_path / "ft.safetensors"
    refused(invoke("run", "tiny", f"tasks=shape,{bad}", "--run-dir", run), f"{folder / 'c1' / '3.png'}: cannot be decoded")
    refused(invoke("finetune", "--pretrained", tiny_run / "theta0.safetensors", "--data", bad, "--out", out,
                   "--steps", "1"), f"{folder / 'c1' / '3.png'}: cannot be decoded")
    assert not run.exists() and not out.exists()
    split = tmp_path / "split"
    image_folder(split / "train", 2), image_folder(split / "val", 3)
    refused(invoke("run", "tiny", f"tasks=shape,imagefolder:split={split}", "--run-dir", run),
            "the train and val splits have different classes")
    assert not run.exists()


# -- 5. half-precision checkpoints and DDP prefixes ------------------------------------------------------------


def test_half_precision_checkpoints_are_read_everywhere_and_said(tiny_run: Path, tmp_path: Path) -> None:
    from qgeom import io as qio

    theta, meta = qio.load_params(tiny_run / "seed0/finetune/hue.safetensors")
    rho = tiny_run / "seed0/qat2/rho_shape.safetensors"
    for dtype in (torch.float16, torch.bfloat16):
        half = tmp_path / f"{dtype}.safetensors"
        qio.save_params(half, {k: v.to(dtype) for k, v in theta.items()}, meta)
        name = str(dtype).replace("torch.", "")
        for args in (["evaluate", half, "--bits", "2"], ["geometry", half, rho, rho, "--n-probe", "4"]):
            res = invoke(*args)
            assert res.exit_code == 0 and "Traceback" not in res.output, res.output
            assert f"note: {half}: {name} tensors upcast to float32" in res.output


def test_ddp_prefixes_are_recognised(tmp_path: Path) -> None:
    from qgeom.models import create_model

    ddp = tmp_path / "ddp.pth"
    state = create_model("micro", 6, seed=0).state_dict()
    torch.save({"state_dict": {f"module.{k}": v.to(torch.bfloat16) for k, v in state.items()}}, ddp)
    res = invoke("evaluate", ddp, "--model", "micro", "--data", "hue")
    assert res.exit_code == 0, res.output
    assert "read without the prefix" in res.output and "bfloat16 tensors upcast" in res.output
    from qgeom.models import load_pretrained  # a run's θ_0 from such a file (theta0=FILE) too

    notes: list[str] = []
    backbone = load_pretrained(str(ddp), create_model("micro", 6), notes)
    assert all(v.dtype == torch.float32 for v in backbone.values()) and len(notes) == 2


# -- 6. nothing is written before the whole configuration and theta0 are validated --------------------------------


def test_a_failed_start_writes_nothing(tmp_path: Path, monkeypatch) -> None:
    import pickle

    run = tmp_path / "fresh"
    refused(invoke("run", "tiny", 'model_overrides={"bogus_kw": 1}', "--run-dir", run),
            'model_overrides: {"bogus_kw": 1} do not build a micro model', "bogus_kw")
    refused(invoke("run", "tiny", 'model_overrides={"embed_dim": 30, "num_heads": 4}', "--run-dir", run),
            "model_overrides:")
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(print, protocol=2))  # a pickle that names a callable: never loaded
    refused(invoke("run", "tiny", f"theta0={evil}", "controls=negated", "--run-dir", run),
            f"{evil}: refused to load")
    assert not run.exists()
    monkeypatch.chdir(tmp_path)  # an empty config used to start the demo into ./runs/demo
    for text, needle in (("", "the config file is empty"), ("# nothing\n", "the config file is empty"),
                         ("tasks: [shape\n", "not valid YAML")):
        (tmp_path / "c.yaml").write_text(text)
        refused(invoke("run", tmp_path / "c.yaml"), f"{tmp_path / 'c.yaml'}: {needle}")
    (tmp_path / "c.json").write_text('{"preset_base": "tiny",}')
    refused(invoke("run", tmp_path / "c.json"), f"{tmp_path / 'c.json'}: not valid JSON")
    assert not run.exists() and not (tmp_path / "runs").exists()


# -- 7. processes, permissions, one writer ---------------------------------------------------------------------


def test_files_qgeom_writes_honour_the_umask(tiny_run: Path, tmp_path: Path) -> None:
    import os
    import stat

    from qgeom.io import atomic_write, write_json

    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.csv", lambda tmp: Path(tmp).write_text("x"))
        res = invoke("ptq", "--weights", tiny_run / "seed0/finetune/hue.safetensors", "--out", tmp_path / "p.safetensors")
        assert res.exit_code == 0, res.output
        os.umask(0o027)
        write_json(tmp_path / "b.json", {"a": 1})
    finally:
        os.umask(old)
    mode = {n: stat.S_IMODE((tmp_path / n).stat().st_mode) for n in ("a.csv", "p.safetensors", "b.json")}
    assert mode == {"a.csv": 0o644, "p.safetensors": 0o644, "b.json": 0o640}


def test_a_second_writer_of_a_run_directory_is_refused(run_copy: Path) -> None:
    from qgeom.experiment.layout import RunLayout
    from qgeom.files import hold_lock

    before = (run_copy / "accuracy.csv").read_bytes()
    with hold_lock(RunLayout(run_copy).lock, str(run_copy)):  # as another `qgeom run` would, while it runs
        refused(invoke("run", "tiny", "--run-dir", run_copy),
                f"{run_copy} is being written by another qgeom process (pid ", "wait for it to finish")
    assert (run_copy / "accuracy.csv").read_bytes() == before


def _children(pid: int) -> set[int]:
    """Live descendants of ``pid`` (from /proc; zombies count as gone)."""
    found, frontier = set(), {pid}
    while frontier:
        parents, frontier = frontier, set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) in parents and fields[0] != "Z":
                frontier.add(int(stat.parent.name))
        found |= frontier
    return found


def _alive(pids: set[int]) -> set[int]:
    out = set()
    for p in pids:
        try:
            if Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                out.add(p)
        except OSError:
            pass
    return out


def _default_sigint() -> None:
    """SIGINT as a terminal's process has it: a test run launched in the background by a shell
    without job control inherits SIGINT *ignored* (POSIX), and an ignored signal stays ignored
    across exec — the run under test would then never see the Ctrl-C it is sent."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_run_with_workers(run: Path):
    """``qgeom run tiny --workers 2`` on ``run`` (its training removed), in its own process group;
    returns (process, its worker processes) once both workers are up."""
    import os
    import subprocess
    import sys
    import time

    for d in ("seed0/finetune", "seed0/qat2", "other/seed0", "seed0/eval2", "seed0/geometry2"):
        shutil.rmtree(run / d)
    (run / "inputs.json").unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2]))
    proc = subprocess.Popen([sys.executable, "-m", "qgeom", "run", "tiny", "--workers", "2", "--run-dir", str(run),
                             "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True, preexec_fn=_default_sigint)
    deadline = time.time() + 60
    while time.time() < deadline and len(_children(proc.pid)) < 3:  # two workers and the resource tracker
        time.sleep(0.2)
    kids = _children(proc.pid)
    assert len(kids) >= 3 and proc.poll() is None, proc.communicate()[0]
    return proc, kids


def test_workers_die_with_a_killed_run(run_copy: Path) -> None:
    import os
    import signal
    import time

    proc, kids = _start_run_with_workers(run_copy)
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)  # as the OOM killer or a scheduler would: no clean-up runs
    proc.wait()
    deadline = time.time() + 20
    while _alive(kids) and time.time() < deadline:
        time.sleep(0.2)
    left = _alive(kids)
    for p in left:  # do not leave them behind if the test fails
        os.kill(p, signal.SIGKILL)
    assert not left, f"orphans alive 20 s after the run was killed: {left}"


def test_ctrl_c_prints_one_message_and_stops_the_workers(run_copy: Path) -> None:
    import os
    import signal
    import time

    proc, kids = _start_run_with_workers(run_copy)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole process group
    out = proc.communicate(timeout=60)[0].decode()
    time.sleep(0.5)
    assert proc.returncode == 130, out
    assert out.count("Interrupted") == 1 and "Traceback" not in out and "KeyboardInterrupt" not in out, out
    assert not _alive(kids)


# -- 8. the smaller ones --------------------------------------------------------------------------------------------


def test_worker_counts_and_bit_widths_given_twice_are_usage_errors(tmp_path: Path, monkeypatch) -> None:
    for n in ("0", "-1"):
        res = invoke("run", "tiny", "--workers", n, "--run-dir", tmp_path / "r")
        assert res.exit_code == 2 and "--workers" in res.output, res.output
        monkeypatch.setenv("QGEOM_WORKERS", n)
        refused(invoke("run", "tiny", "--run-dir", tmp_path / "r"), f"QGEOM_WORKERS={n!r}: expected a number")
    monkeypatch.setenv("QGEOM_WORKERS", "1")
    res = invoke("run", "tiny", "--bits", "3", "bits=2", "--run-dir", tmp_path / "r")
    assert res.exit_code == 2 and "bit widths given twice" in res.output, res.output
    assert not (tmp_path / "r").exists()


def test_an_output_that_is_an_input_or_a_vector_to_quantize_is_refused(tiny_run: Path, tmp_path: Path) -> None:
    receiver = shutil.copy(tiny_run / "seed0/finetune/hue.safetensors", tmp_path / "hue.safetensors")
    rho = tiny_run / "seed0/qat2/rho_shape.safetensors"
    before = Path(receiver).read_bytes()
    refused(invoke("patch", "--receiver", receiver, "--vector", rho, "--out", receiver),
            f"--out {receiver} is the command's input (--receiver {receiver})")
    refused(invoke("ptq", "--weights", receiver, "--out", tmp_path / "." / "hue.safetensors"), "is the command's input")
    assert Path(receiver).read_bytes() == before
    refused(invoke("ptq", "--weights", rho, "--out", tmp_path / "q.safetensors"),
            f"{rho} is a quantization vector")
    assert not (tmp_path / "q.safetensors").exists()


def test_an_output_on_a_pseudo_filesystem_fails_before_any_work(tiny_run: Path) -> None:
    if not Path("/proc/self").is_dir():
        pytest.skip("no /proc here")
    hue, rho = tiny_run / "seed0/finetune/hue.safetensors", tiny_run / "seed0/qat2/rho_shape.safetensors"
    refused(invoke("geometry", hue, rho, rho, "--out-dir", "/proc/qgeom-out"), "cannot create files here", ": /proc")
    refused(invoke("ptq", "--weights", hue, "--out", "/proc/q.safetensors"), "cannot create files here")


def test_a_task_path_with_a_comma_says_how_to_write_it() -> None:
    from qgeom.experiment.config import with_overrides
    from qgeom.experiment.presets import preset

    refused(invoke("run", "tiny", "tasks=shape,imagefolder:c=/data/a,b"), "tasks: unknown task 'b'", "JSON list")
    cfg = with_overrides(preset("tiny"), ['tasks=["shape", "imagefolder:c=/data/a,b"]'])
    assert cfg.tasks == ("shape", "imagefolder:c=/data/a,b")


def _report_sigint(q, initargs) -> None:  # a spawned child: is SIGINT blocked at start, and after start_worker?
    import signal

    from qgeom.processes import start_worker

    blocked = signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, set())
    start_worker(*initargs)
    q.put((blocked, signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, set()),
           signal.getsignal(signal.SIGINT) == signal.SIG_IGN))


def test_a_ctrl_c_while_workers_are_spawned_is_deferred_not_lost() -> None:
    """The spawn window blocks SIGINT: a Ctrl-C that arrives inside it is delivered when it ends
    (ignoring it there, as before, lost it), and a worker spawned inside it starts with SIGINT
    blocked, then ignores and unblocks it."""
    import multiprocessing as mp
    import signal

    q = mp.get_context("spawn").Queue()
    old = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (see _default_sigint)
    try:
        _deferred_then_raised(q)
    finally:
        signal.signal(signal.SIGINT, old)
    assert q.get(timeout=60) == (True, False, True)


def _deferred_then_raised(q) -> None:
    import multiprocessing as mp
    import os
    import signal

    from qgeom.experiment.run import sigint_deferred
    from qgeom.processes import worker_initargs

    with pytest.raises(KeyboardInterrupt):
        with sigint_deferred():
            child = mp.get_context("spawn").Process(target=_report_sigint, args=(q, worker_initargs(None)))
            child.start()
            os.kill(os.getpid(), signal.SIGINT)  # pending, not lost
            reached_end_of_block = True
    assert reached_end_of_block
    child.join(60)
