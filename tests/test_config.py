from pathlib import Path

import pytest

from seq2seq_cli.config import load_config
from seq2seq_cli.errors import UserError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    return path


MINIMAL = "data: {train_src: a.en, train_tgt: a.de, dev_src: b.en, dev_tgt: b.de}\n"


def test_defaults_and_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(write(tmp_path, MINIMAL), ["training.max_steps=200", "model.hidden_size=128"])
    assert config.training.max_steps == 200
    assert config.model.hidden_size == 128
    assert config.model.embed_dim == 256


def test_relative_paths_resolve_against_working_directory(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    path = write(tmp_path / "sub", MINIMAL + "run_dir: runs/x\n")
    monkeypatch.chdir(tmp_path)
    config = load_config(path)
    assert config.data.train_src == str(tmp_path / "a.en")
    assert config.run_dir == str(tmp_path / "runs" / "x")


@pytest.mark.parametrize("text, overrides, fragment", [
    (MINIMAL + "model: {hiden_size: 3}\n", [], "model.hiden_size"),
    (MINIMAL + "model: {hidden_size: big}\n", [], "model.hidden_size"),
    (MINIMAL + "model: {hidden_size: -4}\n", [], "model.hidden_size must be positive"),
    (MINIMAL + "model: {dropout: 1.0}\n", [], "model.dropout must be in [0, 1)"),
    (MINIMAL, ["data.unknown_placeholders=1.5"], "data.unknown_placeholders must be a share of the training pairs"),
    (MINIMAL, ["training.batch_tokens=0"], "command-line override training.batch_tokens=0: training.batch_tokens must"),
    (MINIMAL + "training: {batch_tokens: 0}\n", ["training.max_steps=5"], "c.yaml: training.batch_tokens must"),
    (MINIMAL, ["training.device=gpu"], "c.yaml (with command-line overrides): training.device must be"),
    (MINIMAL, ["training.nope=1"], "training.nope"),
    (MINIMAL, ["training.max_steps"], "not KEY=VALUE"),
    ("data: {train_src: a.en}\n", [], "data.train_tgt"),
    (MINIMAL + "model: [1, 2\n", [], "malformed YAML"),
    ("- a\n- b\n", [], "mapping"),
    (MINIMAL + "training: {device: tpu}\n", [], "training.device"),
    (MINIMAL, ["training.plateau_metric=ppl"], "training.plateau_metric must be 'bleu', 'chrf' or 'loss'"),
    (MINIMAL, ["training.best_metric=ter"], "training.best_metric must be 'bleu', 'chrf' or 'loss'"),
    (MINIMAL, ["decoding.cuda_graphs=on"], "decoding.cuda_graphs must be 'auto' or 'off'"),
    (MINIMAL + "model: {embed_type: bert}\n", [], "model.embed_type=bert"),
    (MINIMAL + "model: {tie_embeddings: yes}\n", [], "model.tie_embeddings must be"),
    (MINIMAL + "model: {tie_embeddings: output, output_dim: 128}\n", [], "model.output_dim (128) must equal"),
    (MINIMAL + "model: {tie_embeddings: all}\ntokenizer: {shared_vocab: false}\n", [], "one vocabulary"),
])
def test_bad_configs_name_the_key(tmp_path, text, overrides, fragment):
    with pytest.raises(UserError) as caught:
        load_config(write(tmp_path, text), overrides)
    message = str(caught.value)
    assert fragment in message
    assert "\n" not in message


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_bundled_configs_hold_what_the_readme_says(monkeypatch):
    root = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(root)  # their relative paths are meant to be read from the project root
    configs = {path.name: load_config(path) for path in sorted((root / "configs").glob("*.yaml"))}
    assert set(configs) == {"toy.yaml", "multi30k_cpu.yaml", "multi30k_de_en.yaml"}
    toy = configs["toy.yaml"]
    # The demo gives the same model on any machine, idle or busy: it never stops on time.
    assert toy.training.max_minutes == 0 and toy.training.max_epochs > 0
    assert toy.training.log_every <= 50  # a train-loss curve in curves.png, not one point
    assert Path(toy.data.train_src) == root / "data" / "toy" / "train.en" and Path(toy.data.train_src).is_file()
    assert Path(toy.data.test_tgt) == root / "data" / "toy" / "test.de"
    for name in ("multi30k_cpu.yaml", "multi30k_de_en.yaml"):
        config = configs[name]
        assert Path(config.data.train_src) == root / "data" / "multi30k" / "train.de.gz"
        assert Path(config.data.test_src) == root / "data" / "multi30k" / "test_2016_flickr.de.gz"
        assert config.decoding.beam_size == 5 and config.model.tie_embeddings == "output"
    assert configs["multi30k_cpu.yaml"].training.max_minutes == 20  # the 20-minute CPU budget of the README
    assert configs["multi30k_de_en.yaml"].training.keep_last >= 5  # for `s2s average --last 5`
