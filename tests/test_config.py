"""The frozen run configuration and its policies, --config on every entry point that saves options, and the errors
of the run-configuration review: handlers restored, unknown backbone names, OS errors, a non-finite loss, a torn
metrics line."""
from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import predict
import train
from engine.loop import train_one_epoch
from engine.runtime import configure_device, save_options
from models import build_model
from options.policy import FREE, ONCE, RESULT, RESUMABLE
from options.predict_options import parse_predict_options
from options.protocol_options import parse_protocol_options
from options.test_options import parse_test_options
from options.train_options import parse_train_options
from tests.conftest import TINY_ARGS, train_args
from utils.errors import AHIQError
from utils.files import FolderLock
from utils.logger import EpochLog

REPO = Path(__file__).resolve().parents[1]


def test_the_configuration_is_frozen_and_derives_what_it_needs(tmp_path):
    cfg = parse_train_options(["--checkpoints_dir", str(tmp_path), "--name", "x", "--gpu_ids", "-1",
                               "--vit_blocks", "1,3", "--no_pretrained"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3
    assert cfg.run_dir == str(tmp_path / "x") and cfg.gpu_list == ()
    assert cfg.given_switches == {"vit_blocks": (1, 3)} and cfg.model_switches["vit_blocks"] == (1, 3)
    assert cfg.model_switches["fusion"] == "deform"  # the default of a new run, from options/
    assert cfg.list_format == "pipal" and cfg.lower_better is False  # resolved from the preset, once
    again = cfg.replace(name="y")
    assert again.run_dir == str(tmp_path / "y") and cfg.name == "x"


def test_each_option_carries_its_policy():
    cfg = parse_train_options(["--gpu_ids", "-1"])
    assert {cfg.policy(k) for k in ("seed", "learning_rate", "crop_size", "no_pretrained", "val_freq", "tf32")} \
        == {RESULT}
    assert cfg.policy("n_epoch") == RESUMABLE
    assert {cfg.policy(k) for k in ("num_workers", "gpu_ids", "vit_weights", "deform_impl", "save_interval")} == {FREE}
    assert {cfg.policy(k) for k in ("config", "resume")} == {ONCE}
    assert set(cfg.fields(RESULT, RESUMABLE, FREE, ONCE)) == set(cfg.to_dict())  # every option has exactly one


def test_resume_refuses_every_option_that_changes_results_and_takes_n_epoch(train_sets, tmp_path):
    train.main(train_args(train_sets, tmp_path, "run", "--n_epoch", "1"))
    for changed, name in ((["--crop_size", "40"], "crop_size"), (["--val_freq", "2"], "val_freq"),
                          (["--seed", "3"], "seed"), (["--no_tf32"], "tf32")):
        with pytest.raises(AHIQError, match=f"was trained with other options \\(--{name} "):
            train.main(train_args(train_sets, tmp_path, "run", "--n_epoch", "2", "--resume", *changed))
    state = train.main(train_args(train_sets, tmp_path, "run", "--n_epoch", "2", "--resume", "--num_workers", "0"))
    assert state.epoch == 2


def test_config_reruns_predict_and_protocol(tmp_path, tiny_ckpt, pipal_set):
    saved = tmp_path / "opt.json"
    saved.write_text(json.dumps({"n_ensemble": 3, "crops_per_forward": 7, "seed": 5, "resume": True}))
    cfg = parse_predict_options(["--config", str(saved), "--dis", "a.png", "--ref", "b.png", "--gpu_ids", "-1"])
    assert (cfg.n_ensemble, cfg.crops_per_forward, cfg.seed) == (3, 7, 5)
    cfg = parse_protocol_options(["--config", str(saved), "--gpu_ids", "-1", "--seed", "6",
                                  "--checkpoints_dir", str(tmp_path)])
    assert (cfg.n_ensemble, cfg.seed, cfg.resume) == (3, 6, False)  # the command line wins; --resume is not rerun
    dis = f"{pipal_set['dis']}/{pipal_set['names'][0]}"
    ref = f"{pipal_set['ref']}/A0000.bmp"
    once = predict.main(["--dis", dis, "--ref", ref, "--ckpt", tiny_ckpt, "--no_pretrained", "--gpu_ids", "-1",
                         "--crop_size", "32", "--n_ensemble", "3", "--num_workers", "0"])
    rerun = predict.main(["--config", str(saved), "--dis", dis, "--ref", ref, "--ckpt", tiny_ckpt,
                          "--no_pretrained", "--gpu_ids", "-1", "--crop_size", "32", "--num_workers", "0",
                          "--seed", "1919"])
    assert rerun == once  # n_ensemble 3 came from the file


def test_test_config_round_trips_through_its_saved_file(tmp_path, tiny_ckpt, pipal_set):
    args = ["--test_ref_path", pipal_set["ref"], "--test_dis_path", pipal_set["dis"], "--test_list",
            pipal_set["list"], "--ckpt", tiny_ckpt, "--crop_size", "32", "--n_ensemble", "2", "--gpu_ids", "-1",
            "--checkpoints_dir", str(tmp_path), "--name", "t", *TINY_ARGS[-1:]]
    cfg = parse_test_options(args)
    save_options(cfg, "test")
    saved = str(tmp_path / "t" / "opt_test.json")
    again = parse_test_options(["--config", saved])
    assert again.config == saved and again.replace(config=None) == cfg


def test_training_restores_the_signal_handlers_it_replaced(train_sets, tmp_path):
    def mine(*_):
        pass

    before = signal.signal(signal.SIGINT, mine)
    try:
        train.main(train_args(train_sets, tmp_path, "handlers", "--n_epoch", "1"))
        assert signal.getsignal(signal.SIGINT) is mine
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGINT, before)


def test_an_unknown_backbone_name_is_named_as_such():
    with pytest.raises(AHIQError, match=r"vit_name vit_bse_patch8_224: timm .* has no model 'vit_bse_patch8_224'"):
        build_model(8, pretrained=False, vit_name="vit_bse_patch8_224")
    with pytest.raises(AHIQError, match=r"resnet_name resnet50.a9_in1k: timm \S+ has no weights tagged 'a9_in1k' for "
                                        r"resnet50 \(it has: .*a1_in1k"):
        build_model(8, pretrained=True, vit_weights=None, resnet_name="resnet50.a9_in1k", branches="cnn",
                    fusion="conv")


RAISES = """
import sys
from utils.errors import run_cli
def main():
    try:
        raise ValueError("inner cause")
    except ValueError:
        raise OSError(28, "No space left on device (from a library)")
run_cli(main)
"""


@pytest.mark.slow
def test_os_errors_from_libraries_keep_their_cause_and_debug_shows_the_traceback(tmp_path):
    script = tmp_path / "s.py"
    script.write_text(RAISES)
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()
    assert "OSError: [Errno 28] No space left on device (from a library) (raised in" in line
    assert "caused by ValueError: inner cause" in line and "AHIQ_DEBUG=1" in line
    debug = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                           env={**env, "AHIQ_DEBUG": "1"}, timeout=60)
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr


def test_the_projects_own_file_errors_are_one_line(tmp_path):
    with pytest.raises(AHIQError, match=r": cannot be read as a saved configuration of options "
                                         r"\(Is a directory\); pass an opt_"):
        parse_test_options(["--config", str(tmp_path)])  # a folder given as a file
    (tmp_path / "run").write_text("a file where the run folder should be")
    with pytest.raises(AHIQError, match=r"run/\.lock: cannot be created \(File exists\)"):
        FolderLock(str(tmp_path / "run"))


def test_a_non_finite_loss_is_one_line_before_any_weight_changes(tiny_factory):
    model = tiny_factory(8)
    params = [p for part in model.trainable_parts().values() for p in part.parameters()]
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=5)
    batch = {"dis": torch.randint(0, 255, (2, 1, 3, 32, 32), dtype=torch.uint8),
             "ref": torch.randint(0, 255, (2, 1, 3, 32, 32), dtype=torch.uint8), "label": torch.tensor([0.1, 0.9])}
    with pytest.raises(AHIQError, match=r"the training loss became nan at step 1 .*lower --learning_rate"):
        train_one_epoch(model, [batch], optimizer, scheduler, "cpu", None, None,
                        lambda loss: lambda: (float("nan"), False), lambda *_: None, progress=False)
    assert all(torch.equal(a, p) for a, p in zip(before, params))
    model.eval()


def test_only_a_torn_last_line_of_the_metrics_file_is_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": 2}\n{"epo')
    assert EpochLog.read(str(path)) == [{"epoch": 1}, {"epoch": 2}]
    path.write_text('{"epoch": 1}\ngarbage\n{"epoch": 3}\n')
    with pytest.raises(AHIQError, match=r"metrics\.jsonl:2: not a JSON object of epoch metrics"):
        EpochLog.read(str(path))


def test_tf32_is_on_by_default_on_cuda_and_off_with_no_tf32(monkeypatch):
    """The flags test.py, predict.py, train.py and the API set on CUDA (set here without a GPU: they are flags), and
    the run's GPU made the current device (so nothing opens a context on GPU 0 for a run on GPU 3)."""
    current = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: current.append(str(device)))
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        configure_device(parse_test_options(["--gpu_ids", "-1"]), "cuda:0")
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        configure_device(parse_test_options(["--gpu_ids", "-1", "--no_tf32"]), "cuda:0")
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        configure_device(parse_test_options(["--gpu_ids", "-1"]), "cpu")  # nothing changes on the CPU
        assert not torch.backends.cuda.matmul.allow_tf32
        configure_device(parse_test_options(["--gpu_ids", "-1"]), "cuda:3")
        assert current == ["cuda:0", "cuda:0", "cuda:3"]
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = flags


def test_a_mid_epoch_resume_keeps_the_number_of_processes(train_sets, tmp_path):
    """The rest of a stopped epoch is sharded over the processes the run had: a mid-epoch resume with another count
    would train on other samples, so it is refused; the count is saved with the training state."""
    train.main(train_args(train_sets, tmp_path, "procs", "--n_epoch", "1"))
    path = tmp_path / "procs" / "last.pth"
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["train_state"]["world_size"] == 1
    ckpt["train_state"].update(step=2, world_size=2)  # as if two processes were stopped after step 2 of epoch 1
    torch.save(ckpt, path)
    with pytest.raises(AHIQError, match=r"last\.pth: stopped after step 2 of epoch 2 with 2 process\(es\).*resume "
                                        r"with 2 process\(es\)"):
        train.main(train_args(train_sets, tmp_path, "procs", "--n_epoch", "2", "--resume"))


def test_the_command_line_and_the_api_defaults_come_from_the_option_fields(monkeypatch):
    """Each option is written once, as a field of its group: every entry point's parser takes each field under its
    name with the field's default (or the entry point's own), and an edited default reaches the parsers and the
    API's defaults alike, with no second place to edit."""
    import dataclasses

    from options.base_options import default_of, option_fields, options_of
    from options.predict_options import PredictConfig
    from options.protocol_options import ProtocolConfig
    from options.test_options import ScoringFields, TestConfig, scoring_defaults
    from options.train_options import TrainConfig

    for cls in (TrainConfig, TestConfig, PredictConfig, ProtocolConfig):
        fields = option_fields(cls)
        parser = cls.parser()
        assert {a.dest for a in options_of(parser)} == {f.name for f in fields}, cls.__name__
        parsed = parser.parse_args([])
        for f in fields:
            value = getattr(parsed, f.name)
            value = tuple(value) if isinstance(value, list) else value  # frozen as a tuple
            assert value == getattr(cls, "DEFAULTS", {}).get(f.name, default_of(f)), f.name
    field = next(f for f in dataclasses.fields(ScoringFields) if f.name == "n_ensemble")
    monkeypatch.setattr(field, "default", 7)
    assert TestConfig.parser().parse_args([]).n_ensemble == PredictConfig.parser().parse_args([]).n_ensemble == 7
    assert scoring_defaults()["n_ensemble"] == 7
    assert parse_test_options(["--gpu_ids", "-1"]).n_ensemble == 7


def test_a_diverged_first_epoch_does_not_point_at_a_last_pth_that_is_not_there(train_sets, tmp_path):
    with pytest.raises(AHIQError, match=r"the training loss became (nan|inf) .*then continue by starting again: no "
                                        r"last\.pth was written yet"):
        train.main(train_args(train_sets, tmp_path, "run", "--n_epoch", "1", "--learning_rate", "1e30"))
    assert not (tmp_path / "run" / "last.pth").exists()


def test_a_named_preset_names_the_data_everywhere_the_default_one_does_not():
    from engine.runtime import dataset_name
    kadid = parse_test_options(["--dataset", "kadid10k", "--test_list", "lists/mos.txt", "--gpu_ids", "-1"])
    assert dataset_name(kadid, kadid.test_list) == "kadid10k"  # as protocol.py and train.py call it
    own = parse_test_options(["--test_list", "lists/mine.txt", "--gpu_ids", "-1"])
    assert dataset_name(own, own.test_list) == "mine"  # your own data is never called 'pipal'


@pytest.mark.parametrize("parse", ["train", "test", "predict", "protocol"])
def test_each_option_group_is_there_as_itself(parse):
    """cfg.model, cfg.window, cfg.train, ...: each group of an entry point's configuration as that group, holding
    the configuration's values; every option of the configuration is in a group."""
    import dataclasses

    from options.base_options import _groups, option_fields
    from options.predict_options import parse_predict_options
    from options.protocol_options import parse_protocol_options
    from options.train_options import parse_train_options
    parsers = {"train": parse_train_options, "test": parse_test_options, "predict": parse_predict_options,
               "protocol": parse_protocol_options}
    extra = ["--dis", "a.png", "--ref", "b.png"] if parse == "predict" else []
    cfg = parsers[parse](["--gpu_ids", "-1", "--seed", "7", "--fusion", "conv", *extra])
    covered = set()
    for group in _groups(type(cfg)):
        view = getattr(cfg, group.VIEW)
        assert type(view) is group and getattr(cfg, group.VIEW) is view  # made once
        for f in dataclasses.fields(group):
            assert getattr(view, f.name) == getattr(cfg, f.name), f.name
            covered.add(f.name)
    assert {f.name for f in option_fields(type(cfg))} <= covered
    assert cfg.model.fusion == "conv" and cfg.run.seed == 7
    assert dataclasses.replace(cfg, seed=8).run.seed == 8  # a replaced configuration has its own groups
