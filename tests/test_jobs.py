"""Scoring as a job (engine/jobs.py): test.py over two gloo processes gives the predictions of one process, in list
order (running statistics: shared by reference; the released replay: whole batches); a stopped run
continues with --resume to the results of an uninterrupted one; recorded progress is never dropped silently."""
from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import predict
import test as test_entry
from tests.conftest import make_pipal_set, run_to_exit
from tests.forks import Forked, run_ranks
from tests.test_distributed import _shell_env
from utils.errors import AHIQError, Interrupted

REPO = Path(__file__).resolve().parents[1]


def _rows(path: Path) -> tuple[list[str], np.ndarray]:
    rows = [line.split(",") for line in path.read_text().splitlines()]
    return [r[0] for r in rows], np.array([float(r[1]) for r in rows])


def _args(data: dict, ckpt: str, root: Path, name: str, *extra: str) -> list[str]:
    return ["--test_ref_path", data["ref"], "--test_dis_path", data["dis"], "--test_list", data["list"], "--ckpt",
            ckpt, "--crop_size", "32", "--no_pretrained", "--gpu_ids", "-1", "--num_workers", "0",
            "--checkpoints_dir", str(root), "--name", name, "--bootstrap", "0", *extra]


@pytest.mark.slow
def test_two_processes_score_what_one_process_scores(tmp_path, tiny_ckpt):
    data = make_pipal_set(tmp_path / "set", n_refs=3, n_dis=4, size=(40, 40), seed=4)  # 3 references: uneven shares
    runs = {"shared": ["--n_ensemble", "12", "--batch_size", "2"],  # random windows keyed by pixels, running stats
            "released": ["--n_ensemble", "12", "--batch_size", "2", "--random_windows", "official", "--bn_stats",
                         "batch"]}
    for kind, extra in runs.items():
        test_entry.main(_args(data, tiny_ckpt, tmp_path, f"{kind}_1", *extra))
        log = tmp_path / f"{kind}_2.log"  # two ranks of one job, as torchrun starts them (tests/forks.py)
        assert run_ranks("test", _args(data, tiny_ckpt, tmp_path, f"{kind}_2", *extra), log) == 0, log.read_text()
        assert "2 processes" in log.read_text()
        names1, scores1 = _rows(tmp_path / f"{kind}_1" / "results.txt")
        names2, scores2 = _rows(tmp_path / f"{kind}_2" / "results.txt")
        assert names2 == names1 == data["names"]  # every image once, in list order
        # released: the same batches, so the same BatchNorm statistics and windows; both up to float rounding (the
        # CPU's vectorised sums depend on where tensors sit in memory: 1e-7 relative measured here)
        np.testing.assert_allclose(scores2, scores1, rtol=1e-6)
        assert not list((tmp_path / f"{kind}_2").glob(".*.progress"))  # removed once the results are written
    # predict.py shares its pairs the same way; rank 0 writes the one CSV, rows in the order of the pairs
    common = ["--dis_dir", data["dis"], "--ref_dir", data["ref"], "--ckpt", tiny_ckpt, "--crop_size", "32",
              "--no_pretrained", "--gpu_ids", "-1", "--num_workers", "0", "--n_ensemble", "12"]
    predict.main([*common, "--csv", str(tmp_path / "predict_1.csv")])
    log = tmp_path / "predict_2.log"
    assert run_ranks("predict", [*common, "--csv", str(tmp_path / "predict_2.csv")], log) == 0, log.read_text()
    one, two = ((tmp_path / f"predict_{n}.csv").read_text().splitlines() for n in (1, 2))
    assert [r.split(",")[:2] for r in two] == [r.split(",")[:2] for r in one] and len(one) == 13
    np.testing.assert_allclose([float(r.split(",")[2]) for r in two[1:]], [float(r.split(",")[2]) for r in one[1:]],
                               rtol=1e-6)


@pytest.mark.slow
def test_a_stopped_scoring_run_continues_with_resume(tmp_path, tiny_ckpt):
    """SIGTERM while test.py scores: the batch in flight is finished and recorded, exit code 3 and one line; a run
    without --resume is refused (the recorded scores are kept); --resume scores the rest, and the results equal an
    uninterrupted run's."""
    data = make_pipal_set(tmp_path / "set", n_refs=4, n_dis=5, size=(40, 40), seed=6)
    extra = ("--n_ensemble", "12", "--batch_size", "3")
    full = test_entry.main(_args(data, tiny_ckpt, tmp_path, "full", *extra))
    log = tmp_path / "stopped.log"
    # test.py forked (tests/forks.py), with DataLoader workers (they ignore SIGTERM: the job ends them)
    proc = Forked("test", [*_args(data, tiny_ckpt, tmp_path, "stopped", *extra), "--num_workers", "2"], log)
    deadline = time.time() + 120
    while "scoring 20 images" not in log.read_text() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 3, log.read_text()[-3000:]
    last = log.read_text().strip().splitlines()[-1]
    assert last.startswith("error: stopped by SIGTERM after ") and "continue with --resume" in last, last
    progress = tmp_path / "stopped" / ".results.txt.progress"
    recorded = sum(len(p.read_text().splitlines()) for p in progress.glob("*.txt"))
    assert 3 <= recorded < 20 and f"after {recorded} of 20 images" in last  # whole batches of 3
    assert not (tmp_path / "stopped" / "results.txt").exists()
    with pytest.raises(AHIQError, match=rf"an interrupted run's scores of {recorded} images are in .*\.progress; "
                                        "pass --resume to continue it, or --overwrite to start again"):
        test_entry.main(_args(data, tiny_ckpt, tmp_path, "stopped", *extra))
    with pytest.raises(AHIQError, match=r"holds the progress of another run \(--n_ensemble 12 then, 5 now\)"):
        test_entry.main(_args(data, tiny_ckpt, tmp_path, "stopped", "--n_ensemble", "5", "--batch_size", "3",
                              "--resume"))
    code, linger = run_to_exit([sys.executable, "test.py", *_args(data, tiny_ckpt, tmp_path, "stopped", *extra),
                                "--resume", "--num_workers", "2"], tmp_path / "resumed.log", _shell_env())
    assert code == 0 and linger < 5, (linger, (tmp_path / "resumed.log").read_text()[-3000:])
    names, scores = _rows(tmp_path / "stopped" / "results.txt")
    full_names, full_scores = _rows(Path(full["predictions"]))
    assert names == full_names
    np.testing.assert_allclose(scores, full_scores, rtol=1e-6)
    assert not progress.exists()


def test_a_stop_with_the_last_batch_finishes_the_list(tmp_path, tiny_ckpt):
    """A stop that comes while the share's last batch is scored leaves nothing to continue: the job ends with every
    prediction (equal to a run without a stop), not with exit code 3 and a --resume to do."""
    from engine.jobs import Progress, score_list
    from engine.scorer import load_scorer
    from utils.distributed import DistInfo
    data = make_pipal_set(tmp_path / "set", n_refs=2, n_dis=3, size=(40, 40), seed=7)
    scorer = load_scorer(tiny_ckpt, str(tmp_path), pretrained=False, crop_size=32, n_ensemble=3)
    dataset = scorer.file_pairs([(f"{data['dis']}/{n}", f"{data['ref']}/{n[:5]}.bmp") for n in data["names"]])
    plain = score_list(scorer, dataset, DistInfo(), batch_size=6, num_workers=0)
    progress = Progress(str(tmp_path / "r.txt"), {"what": "test"}, DistInfo(), resume=False, overwrite=False, n=6)
    stopped = score_list(scorer, dataset, DistInfo(), 6, 0, progress, stop=lambda: "SIGTERM")  # one batch: the last
    assert stopped.names == plain.names == data["names"]
    np.testing.assert_array_equal(stopped.preds, plain.preds)
    progress = Progress(str(tmp_path / "s.txt"), {"what": "test"}, DistInfo(), resume=False, overwrite=False, n=6)
    with pytest.raises(Interrupted, match=r"stopped by SIGTERM after 2 of 6 images: their scores are in .*s\.txt"):
        score_list(scorer, dataset, DistInfo(), 2, 0, progress, stop=lambda: "SIGTERM")  # three batches: stops


@pytest.mark.slow
def test_a_stopped_predict_run_with_csv_continues_with_resume(tmp_path, tiny_ckpt):
    """predict.py records its batches beside --csv: SIGTERM stops it after the batch in flight (exit 3, one line),
    and --resume writes the CSV an uninterrupted run writes."""
    data = make_pipal_set(tmp_path / "set", n_refs=4, n_dis=5, size=(40, 40), seed=8)
    common = ["--dis_dir", data["dis"], "--ref_dir", data["ref"], "--ckpt", tiny_ckpt, "--crop_size", "32",
              "--no_pretrained", "--gpu_ids", "-1", "--num_workers", "0", "--n_ensemble", "12", "--batch_size", "3"]
    predict.main([*common, "--csv", str(tmp_path / "full.csv")])
    log = tmp_path / "stopped.log"
    proc = Forked("predict", [*common, "--csv", str(tmp_path / "stopped.csv"), "--num_workers", "2"], log)
    deadline = time.time() + 120
    while "scoring" not in log.read_text().split("pairs:")[-1] and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 3, log.read_text()[-3000:]
    assert "continue with --resume" in log.read_text().strip().splitlines()[-1]
    assert (tmp_path / ".stopped.csv.progress").is_dir() and not (tmp_path / "stopped.csv").exists()
    with pytest.raises(AHIQError, match="pass --resume to continue it"):
        predict.main([*common, "--csv", str(tmp_path / "stopped.csv")])
    code, linger = run_to_exit([sys.executable, "predict.py", *common, "--csv", str(tmp_path / "stopped.csv"),
                                "--resume", "--num_workers", "2"], tmp_path / "resumed.log", _shell_env())
    assert code == 0 and linger < 5, (linger, (tmp_path / "resumed.log").read_text()[-3000:])
    full, resumed = ((tmp_path / f"{n}.csv").read_text().splitlines() for n in ("full", "stopped"))
    assert [r.split(",")[:2] for r in resumed] == [r.split(",")[:2] for r in full]
    np.testing.assert_allclose([float(r.split(",")[2]) for r in resumed[1:]],
                               [float(r.split(",")[2]) for r in full[1:]], rtol=1e-6)
    assert not (tmp_path / ".stopped.csv.progress").exists()


def _stopped_after_one_batch(monkeypatch, argv: list[str]) -> Path:
    """test.py ARGV stopped (as by SIGTERM) after its first batch; returns its progress folder."""
    from utils.errors import StopRequest

    class StopAtOnce(StopRequest):
        def __enter__(self):
            super().__enter__()
            self.signal = "SIGTERM"
            return self

    with monkeypatch.context() as m:
        m.setattr(test_entry, "StopRequest", StopAtOnce)
        with pytest.raises(Interrupted, match="continue with --resume"):
            test_entry.main(argv)
    folder = Path(argv[argv.index("--checkpoints_dir") + 1]) / argv[argv.index("--name") + 1] / ".results.txt.progress"
    assert folder.is_dir()
    return folder


def _tiny_backbone(path: Path, seed: int) -> str:
    import timm
    import torch
    from safetensors.torch import save_file

    from models.tiny import TINY_VIT
    torch.manual_seed(seed)
    save_file({k: v.contiguous() for k, v in timm.create_model(TINY_VIT[8]).state_dict().items()}, str(path))
    return str(path)


def test_a_resumed_scoring_run_refuses_a_list_checkpoint_or_backbone_changed_in_place(tmp_path, tiny_ckpt,
                                                                                      tiny_factory, monkeypatch):
    """The progress is bound to what decides the results, not to paths: a list edited in place (reordered), a
    checkpoint or a backbone file replaced at the same path is refused on --resume, naming what changed."""
    import shutil

    from utils.checkpoint import save_weights
    data = make_pipal_set(tmp_path / "set", n_refs=2, n_dis=3, size=(40, 40), seed=9)
    ckpt = tmp_path / "model.pth"
    shutil.copy(tiny_ckpt, ckpt)
    vit = _tiny_backbone(tmp_path / "vit.safetensors", 1)
    argv = _args(data, str(ckpt), tmp_path, "run", "--n_ensemble", "2", "--batch_size", "2", "--vit_weights", vit,
                 "--allow_other_backbones")
    _stopped_after_one_batch(monkeypatch, argv)
    listed = Path(data["list"]).read_text()
    Path(data["list"]).write_text("\n".join(reversed(listed.splitlines())) + "\n")  # same names, other order
    with pytest.raises(AHIQError, match=r"\.results\.txt\.progress: holds the progress of another run \(the list's "
                                        r"content \(names, references, labels\) changed\); .*--overwrite"):
        test_entry.main([*argv, "--resume"])
    Path(data["list"]).write_text(listed)
    save_weights(str(ckpt), _other_head(tiny_factory))
    with pytest.raises(AHIQError, match=r"another run \(the checkpoint's weights changed\)"):
        test_entry.main([*argv, "--resume"])
    shutil.copy(tiny_ckpt, ckpt)
    _tiny_backbone(tmp_path / "vit.safetensors", 2)
    with pytest.raises(AHIQError, match=r"another run \(the ViT backbone's weights changed\)"):
        test_entry.main([*argv, "--resume"])
    _tiny_backbone(tmp_path / "vit.safetensors", 1)
    resumed = test_entry.main([*argv, "--resume"])  # everything as it was: it continues
    assert resumed["n_images"] == 6


def _other_head(tiny_factory):
    """The tiny model with other regressor weights (its backbones unchanged)."""
    import copy

    import torch
    model = copy.deepcopy(tiny_factory(8))
    with torch.no_grad():
        for p in model.regressor.parameters():
            p.add_(0.01)
    return model


@pytest.mark.parametrize("line, problem", [
    ("-1,0.123\n", "names image -1, outside the list's 6"), ("999,0.123\n", "names image 999, outside the list's 6"),
    ("abc,0.5\n", "is not an 'index,score' record"), ("5,nan\n", "scores image 5 nan"),
    ("0,0.5\n", r"records image 0 again \(also rank0-pid\d+\.txt, line 1\)")])
def test_a_progress_record_that_cannot_be_trusted_is_refused_naming_file_and_line(tmp_path, tiny_ckpt, monkeypatch,
                                                                                   line, problem):
    data = make_pipal_set(tmp_path / "set", n_refs=2, n_dis=3, size=(40, 40), seed=10)
    argv = _args(data, tiny_ckpt, tmp_path, "run", "--n_ensemble", "2", "--batch_size", "2")
    folder = _stopped_after_one_batch(monkeypatch, argv)
    (folder / "rank1-pid1.txt").write_text(line)
    with pytest.raises(AHIQError, match=rf"rank1-pid1\.txt, line 1: {problem}; this progress cannot be trusted"):
        test_entry.main([*argv, "--resume"])
    (folder / "rank1-pid1.txt").write_text("3,0.5")  # a line torn by a kill (no line end) is dropped
    resumed = test_entry.main([*argv, "--resume"])
    assert resumed["n_images"] == 6


def test_predict_progress_is_bound_to_the_weights_too(tmp_path, tiny_ckpt, tiny_factory, monkeypatch):
    import shutil

    from utils.checkpoint import save_weights
    from utils.errors import StopRequest

    class StopAtOnce(StopRequest):
        def __enter__(self):
            super().__enter__()
            self.signal = "SIGTERM"
            return self

    data = make_pipal_set(tmp_path / "set", n_refs=2, n_dis=3, size=(40, 40), seed=11)
    ckpt = tmp_path / "model.pth"
    shutil.copy(tiny_ckpt, ckpt)
    argv = ["--dis_dir", data["dis"], "--ref_dir", data["ref"], "--ckpt", str(ckpt), "--crop_size", "32",
            "--no_pretrained", "--gpu_ids", "-1", "--num_workers", "0", "--n_ensemble", "2", "--batch_size", "2",
            "--csv", str(tmp_path / "out.csv")]
    with monkeypatch.context() as m:
        m.setattr(predict, "StopRequest", StopAtOnce)
        with pytest.raises(Interrupted):
            predict.main(argv)
    save_weights(str(ckpt), _other_head(tiny_factory))
    with pytest.raises(AHIQError, match=r"\.out\.csv\.progress: holds the progress of another run \(the checkpoint's "
                                        r"weights changed\)"):
        predict.main([*argv, "--resume"])
    shutil.copy(tiny_ckpt, ckpt)
    assert len(predict.main([*argv, "--resume"])) == 6


def test_a_progress_folder_whose_header_is_not_ours_is_refused(tmp_path):
    from engine.jobs import Progress
    from utils.distributed import DistInfo

    results = str(tmp_path / "results.txt")
    Progress(results, {"list": "abc"}, DistInfo(), False, False, n=3).record([0], [0.5])
    with pytest.raises(AHIQError, match=r"holds the progress of another run \(list 'abc' then, 'xyz' now\)"):
        Progress(results, {"list": "xyz"}, DistInfo(), True, False, n=3)
    (tmp_path / ".results.txt.progress" / "header.json").write_text('{"list": "abc"}')  # no format: not ours
    with pytest.raises(AHIQError, match=r"header\.json: not the progress header of a scoring run \(format "
                                        r".*\); move .*\.results\.txt\.progress away, or pass --overwrite"):
        Progress(results, {"list": "abc"}, DistInfo(), True, False, n=3)
