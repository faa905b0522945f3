"""s2s export: a model folder to share or serve, taken wherever a run directory is."""

from pathlib import Path

import pytest
import torch

from seq2seq_cli.checkpoint import load_model
from seq2seq_cli.config import load_config
from seq2seq_cli.launch import train
from seq2seq_cli.metrics import read_metrics

from conftest import assert_user_error, s2s_forked, tiny_config, toy_lines

# Tied output embedding: one tensor under two names, which the export must keep one tensor.
TIED = {"embed_dim": 16, "output_dim": 16, "tie_embeddings": "output"}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    tmp_path = tmp_path_factory.mktemp("export")
    config = load_config(tiny_config(tmp_path, model=TIED, training={"max_steps": 6, "save_every": 2, "keep_last": 2}))
    train(config)
    return Path(config.run_dir)


def translations(checkpoint, *options) -> bytes:
    lines = "".join(line + "\n" for line in toy_lines("test", 30)[0])
    result = s2s_forked("translate", "--checkpoint", checkpoint, "--beam-size", 2, *options, stdin=lines)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def files(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()}


def test_an_export_translates_as_its_run_and_holds_no_training_state(run, tmp_path):
    model = tmp_path / "models" / "en-de"
    result = s2s_forked("export", "--checkpoint", run, "--output", model)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().startswith(f"wrote {model} (") and str(run / "checkpoints" / "best.pt") in result.stdout.decode()
    assert files(model) == {"config.yaml", "metrics.jsonl", "checkpoints/best.pt", "tokenizer/tokenizer.json",
                            "tokenizer/tokenizer_config.json", "tokenizer/vocab.txt"}
    exported = torch.load(model / "checkpoints" / "best.pt", weights_only=True)
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert "trainer" not in exported and exported["step"] == best["step"]
    assert exported["exported_from"] == str((run / "checkpoints" / "best.pt").resolve())
    for name, weight in best["model"].items():
        assert torch.equal(exported["model"][name], weight), name
    assert translations(model) == translations(run)
    assert read_metrics(model / "metrics.jsonl") == read_metrics(run / "metrics.jsonl")

    # s2s info counts a tied weight once, as the model's own parameters() does.
    loaded, _, _ = load_model(model, torch.device("cpu"))
    info = s2s_forked("info", model)
    assert info.returncode == 0, info.stderr.decode()
    assert f"{sum(p.numel() for p in loaded.parameters()):,}" in info.stdout.decode()
    assert sum(p.numel() for p in loaded.parameters()) < sum(t.numel() for t in best["model"].values())

    # It fine-tunes as its run does (the same weights: the same first steps) and never resumes.
    children = []
    for parent in (run, model):
        folder = tmp_path / f"child-of-{parent.name}"
        config = tiny_config(folder, model=TIED, training={"max_steps": 2, "validate_every": 0, "init_from": str(parent)})
        trained = s2s_forked("train", "--config", config)
        assert trained.returncode == 0, trained.stderr.decode()
        records = read_metrics(folder / "run" / "metrics.jsonl")
        children.append([r["train_loss"] for r in records if r["event"] == "train"])
    assert children[0] and children[0] == children[1]
    assert_user_error(s2s_forked("train", "--resume", model), "no checkpoints/last.pt")


def test_fp16_halves_the_weights_and_keeps_a_tied_weight_one_tensor(run, tmp_path):
    full, half = tmp_path / "fp32", tmp_path / "fp16"
    for folder, options in ((full, []), (half, ["--fp16"])):
        result = s2s_forked("export", "--checkpoint", run, "--output", folder, *options)
        assert result.returncode == 0, result.stderr.decode()
    weights = torch.load(half / "checkpoints" / "best.pt", weights_only=True)["model"]
    assert all(t.dtype == torch.float16 for t in weights.values() if t.is_floating_point())
    assert weights["decoder.embedding.weight"].data_ptr() == weights["decoder.output.weight"].data_ptr()
    size = lambda folder: (folder / "checkpoints" / "best.pt").stat().st_size  # noqa: E731
    assert size(half) < 0.55 * size(full)
    # Read back into fp32: each weight is its fp32 value rounded to fp16 once.
    rounded, _, _ = load_model(half, torch.device("cpu"))
    original, _, _ = load_model(full, torch.device("cpu"))
    for (name, value), reference in zip(rounded.state_dict().items(), original.state_dict().values()):
        assert value.dtype == reference.dtype and torch.equal(value, reference.half().to(reference.dtype)), name
    assert translations(half).count(b"\n") == 30


def test_export_writes_only_to_a_new_folder_and_takes_any_checkpoint(run, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    assert_user_error(s2s_forked("export", "--checkpoint", run, "--output", taken),
                      f"--output {taken}: already exists and is not an empty folder")
    assert files(taken) == {"notes.txt"} and (taken / "notes.txt").read_text() == "mine"
    assert_user_error(s2s_forked("export", "--checkpoint", run, "--output", run), "already exists")
    assert_user_error(s2s_forked("export", "--checkpoint", tmp_path / "nothing", "--output", tmp_path / "x"),
                      "no such checkpoint file or run directory")
    assert not (tmp_path / "x").exists()
    assert_user_error(s2s_forked("export", "--checkpoint", run, "--output", taken / "notes.txt" / "model"),
                      f"--output {taken / 'notes.txt' / 'model'}: cannot write it")

    # A checkpoint file, e.g. a kept step: its weights, not the run's best.
    step = run / "checkpoints" / "step-00000004.pt"
    empty = tmp_path / "empty"
    empty.mkdir()
    result = s2s_forked("export", "--checkpoint", step, "--output", empty)
    assert result.returncode == 0, result.stderr.decode()
    exported = torch.load(empty / "checkpoints" / "best.pt", weights_only=True)
    assert exported["step"] == 4 and "trainer" not in exported
    assert translations(empty) == translations(step)
