"""`resweep run` input errors: exit status 2 with a readable message, before Ray starts."""

from __future__ import annotations

from orchestrator.cli import main as resweep


def test_invalid_study_exits_2_naming_the_problem(tmp_path, capsys, write_study):
    study = write_study("bad", space={"depth": [2, 4]}, model={"family": "mlp"})
    text = study.read_text().replace("design: grid", "design: gird")
    study.write_text(text)
    assert resweep(["run", str(study), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
    err = capsys.readouterr().err
    assert "design" in err and "gird" in err and "Traceback" not in err
    assert not (tmp_path / "m.db").exists()  # nothing was created


def test_resume_without_an_earlier_run_exits_2(tmp_path, capsys, write_study):
    study = write_study("never-ran", space={"depth": [2]}, model={"family": "mlp"})
    assert resweep(["run", str(study), "--resume",
                    "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
    assert "--resume" in capsys.readouterr().err


def test_dry_run_prints_the_plan_and_starts_nothing(tmp_path, capsys, write_study):
    study = write_study("dry", space={"depth": [2, 4]}, model={"family": "mlp"})
    assert resweep(["run", str(study), "--dry-run",
                    "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 0
    out = capsys.readouterr().out
    assert "mlp-2" in out and "mlp-4" in out
    assert not (tmp_path / "m.db").exists()


def test_dry_run_with_an_unreachable_tracking_server_exits_2(tmp_path, capsys, write_study,
                                                             monkeypatch, free_port):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # refused at once, no backoff
    study = write_study("dry", space={"depth": [2]}, model={"family": "mlp"})
    assert resweep(["run", str(study), "--dry-run",
                    "--tracking-uri", f"http://127.0.0.1:{free_port()}"]) == 2
    err = capsys.readouterr().err
    assert "--tracking-uri" in err and "Traceback" not in err


def test_train_rejects_a_non_object_config_and_a_missing_out_folder_before_training(
        tmp_path, capsys, write_study):
    # (`resweep train` input errors beside the run ones: both come before any work starts)
    config = tmp_path / "trial.json"
    config.write_text("[1, 2]")
    assert resweep(["train", "--config", str(config)]) == 2
    assert "JSON list" in capsys.readouterr().err
    study = write_study("one", space={"depth": [2]}, model={"family": "mlp"})
    assert resweep(["train", str(study), "--out", str(tmp_path / "no" / "r.json")]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "Traceback" not in err
