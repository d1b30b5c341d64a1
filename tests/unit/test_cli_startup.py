"""Start-up cost: `tunelab --help`, every --help, `init` and a spec typo must not import the ML stack,
and `import tunelab` must stay light (the public API loads lazily). Measured as the modules in
sys.modules after the command, not as wall time (which depends on the machine)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "transformers", "peft", "accelerate", "datasets")
ROOT = Path(__file__).resolve().parents[2]

# Runs `tunelab ARGS...` as the console script does (tunelab.cli:main), then reports the exit code and
# which heavy modules got imported, as the last line of stdout.
WRAPPER = f"""
import json, sys
sys.argv = ["tunelab", *sys.argv[1:]]
from tunelab.cli import main
code = 0
try:
    main()
except SystemExit as e:
    code = e.code
sys.stdout.flush()
print("\\n" + json.dumps({{"code": code, "heavy": sorted(m for m in {HEAVY!r} if m in sys.modules)}}))
"""


def tunelab(*args: str, cwd: Path) -> tuple[dict, subprocess.CompletedProcess]:
    result = subprocess.run([sys.executable, "-c", WRAPPER, *args], capture_output=True, text=True, cwd=cwd,
                            timeout=300)
    assert result.stdout.strip(), result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1]), result


def python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


COMMANDS = ["train", "plan", "auto", "evaluate", "predict", "init", "export", "generate", "chat", "models", "monitor", "serve", "tune",
            "data", "data check", "data clean", "data preview"]


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_does_not_import_the_ml_stack(command: str, tmp_path: Path) -> None:
    status, result = tunelab(*command.split(), "--help", cwd=tmp_path)
    assert status == {"code": 0, "heavy": []}, result.stderr
    assert "Usage" in result.stdout


def test_init_does_not_import_the_ml_stack(tmp_path: Path) -> None:
    status, result = tunelab("init", "text-classification", cwd=tmp_path)
    assert status == {"code": 0, "heavy": []}, result.stderr
    assert "task: text-classification" in result.stdout


def test_spec_typo_is_reported_before_torch_is_imported(tmp_path: Path) -> None:
    spec = (ROOT / "examples" / "news" / "spec.yaml").read_text(encoding="utf-8")
    assert "\n  epochs: 3" in spec
    (tmp_path / "bad.yaml").write_text(spec.replace("\n  epochs: 3", "\n  epocs: 3"), encoding="utf-8")
    status, result = tunelab("train", "bad.yaml", cwd=tmp_path)
    assert status == {"code": 2, "heavy": []}
    assert "error:" in result.stderr and "epocs" in result.stderr and "did you mean 'epochs'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_user_error_classes_resolve() -> None:
    """The CLI names its user-error classes by module (so that it never imports them): each name must
    still point at an exception class, or a moved class would silently turn exit code 2 into a traceback."""
    from tunelab.cli import USER_ERRORS

    for module_name, class_name in USER_ERRORS:
        cls = getattr(importlib.import_module(module_name), class_name)
        assert isinstance(cls, type) and issubclass(cls, Exception), (module_name, class_name)


def test_user_errors_exit_2_and_others_exit_70(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from tunelab import cli
    from tunelab.run import RunError

    def fail_with(exc: BaseException):
        def app() -> None:
            raise exc
        return app

    monkeypatch.setattr(cli, "app", fail_with(RunError("runs/x: not a run directory (no spec.yaml)")))
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    assert "error: runs/x: not a run directory (no spec.yaml)" in capsys.readouterr().err

    monkeypatch.setattr(cli, "app", fail_with(KeyError("a bug")))
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 70  # tunelab.run.exitcodes.INTERNAL: the traceback, and whose bug it is
    err = capsys.readouterr().err
    assert "KeyError: 'a bug'" in err and "this is a bug in tunelab" in err


def test_import_tunelab_is_light(tmp_path: Path) -> None:
    result = python("import json, sys, tunelab; print(json.dumps({'all': tunelab.__all__, "
                    "'version': tunelab.__version__, 'heavy': sorted(m for m in %r if m in sys.modules)}))" % (HEAVY,),
                    tmp_path)
    info = json.loads(result.stdout)
    assert sorted(info["all"]) == ["RunDir", "auto", "fine_tune", "load_run", "load_spec", "plan", "predict", "tune"]
    assert info["version"]
    assert info["heavy"] == []


def test_public_api_resolves(tmp_path: Path) -> None:
    python("from tunelab import fine_tune, RunDir, load_spec, predict, load_run, tune\n"
           "import tunelab.recipes, tunelab.run, tunelab.spec, tunelab.evaluate.predict, tunelab.auto.tune\n"
           "assert tune is tunelab.auto.tune.tune\n"
           "assert fine_tune is tunelab.recipes.fine_tune and RunDir is tunelab.run.RunDir\n"
           "assert load_spec is tunelab.spec.load_spec\n"
           "assert all(callable(f) for f in (predict, load_run))\n"
           # `auto` stays callable after its package's submodules load (the package itself is callable)
           "from tunelab import auto\n"
           "import tunelab.auto.energy\n"
           "assert auto is tunelab.auto and callable(auto) and tunelab.auto.energy.EnergyMeter\n", tmp_path)


def test_load_run_checks_for_a_spec(tmp_path: Path) -> None:
    from tunelab import RunDir, load_run
    from tunelab.run import RunError

    with pytest.raises(RunError, match="no spec.yaml"):
        load_run(tmp_path)
    (tmp_path / "spec.yaml").write_text("name: x\n", encoding="utf-8")
    run = load_run(tmp_path)
    assert isinstance(run, RunDir) and run.path == tmp_path
