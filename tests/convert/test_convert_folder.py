"""convert_original: strict key and shape checks naming the problem, atomic model folders, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import OriginalFiles
from original_files import write_checkpoint_dir
from safetensors import safe_open

from cogview.cli import main
from cogview.convert import convert_original
from cogview.model import CogViewTransformer
from cogview.pipeline import CogViewPipeline
from cogview.serialization import CheckpointError


def convert(files: OriginalFiles, out: Path, **kwargs) -> dict:
    return convert_original(
        files.checkpoint, files.vqvae, files.text_tokenizer, out,
        config=files.config, vqvae_config=files.vqvae_config, **kwargs,
    )  # fmt: skip


def rewrite(files: OriginalFiles, module: dict) -> None:
    """Replace the checkpoint folder by one holding ``module``."""
    files.model_file.unlink()
    (files.checkpoint / "142000").rmdir()
    (files.checkpoint / "latest_checkpointed_iteration.txt").unlink()
    write_checkpoint_dir(files.checkpoint, module)


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # no temp folder left


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m.pop("transformer.layers.1.third_layernorm.bias"), r"1 missing key\(s\), e\.g\. \['transformer\.layers\.1\.third_layernorm\.bias'\]"),
        (lambda m: m.__setitem__("output.weight", torch.zeros(3)), r"1 unexpected key\(s\), e\.g\. \['output\.weight'\]"),
        (
            lambda m: m.__setitem__("transformer.layers.0.mlp.dense_h_to_4h.weight", torch.zeros(128, 64, dtype=torch.half)),
            r"1 shape mismatch\(es\), e\.g\. \['transformer\.layers\.0\.mlp\.dense_h_to_4h\.weight: file \(128, 64\) vs model \(256, 64\)'\]",
        ),
        (lambda m: m.__setitem__("transformer.position_embeddings.weight", torch.zeros(100, 64, dtype=torch.half)), "has 100 rows; expected 64"),
        (lambda m: m.__setitem__("transformer.word_embeddings.weight", m["word_embeddings.weight"]), "exactly one of"),
        (lambda m: m.__setitem__("transformer.final_layernorm.bias", torch.zeros(64, dtype=torch.long)), r"floating point.*final_layernorm\.bias"),
    ],
)  # fmt: skip
def test_mismatched_checkpoint_names_the_problem_and_writes_nothing(
    original: OriginalFiles, tmp_path: Path, edit, match: str
) -> None:
    module = dict(original.module)
    edit(module)
    rewrite(original, module)
    out = tmp_path / "model"
    with pytest.raises(CheckpointError, match=match):
        convert(original, out)
    assert_nothing_written(out)


def test_more_layers_in_the_file_than_in_the_config(original: OriginalFiles, tmp_path: Path) -> None:
    module = dict(original.module)
    module.update(
        {k.replace("layers.1.", "layers.2."): v for k, v in original.module.items() if ".layers.1." in k}
    )
    rewrite(original, module)
    with pytest.raises(CheckpointError, match=r"16 unexpected key\(s\), e\.g\. \['transformer\.layers\.2\."):
        convert(original, tmp_path / "model")


def test_failure_while_saving_leaves_no_folder(
    original: OriginalFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(self: CogViewTransformer, directory: Path, max_shard_bytes: int | None = None) -> None:
        Path(directory).mkdir(parents=True)
        (Path(directory) / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(CogViewTransformer, "save_pretrained", fail)
    out = tmp_path / "model"
    with pytest.raises(OSError, match="disk full"):
        convert(original, out)
    assert_nothing_written(out)


def test_bad_arguments(original: OriginalFiles, tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(ValueError, match="not an empty folder"):
        convert(original, tmp_path / "taken")
    with pytest.raises(ValueError, match="dtype 'int8'"):
        convert(original, tmp_path / "m", dtype="int8")
    with pytest.raises(ValueError, match="job 'draw'"):
        convert(original, tmp_path / "m", job="draw")
    with pytest.raises(ValueError, match="vocabulary of .* ids, but the transformer has 58240"):
        convert_original(original.checkpoint, original.vqvae, original.text_tokenizer, tmp_path / "m",
                         vqvae_config=original.vqvae_config)  # fmt: skip
    assert not (tmp_path / "m").exists()


def test_fp16_output_keeps_the_release_values(original: OriginalFiles, tmp_path: Path) -> None:
    record = convert(original, tmp_path / "model", dtype="fp16")
    assert record["key_layout"] == "original" and record["iteration"] == "142000"
    with safe_open(tmp_path / "model" / "transformer" / "model.safetensors", "pt") as f:
        assert f.get_tensor("pos_embeddings.weight").dtype == torch.float16
        assert torch.equal(f.get_tensor("norm.weight"), original.module["transformer.final_layernorm.weight"])


def test_cli_end_to_end(original: OriginalFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config, vqvae_config = original.config_files()
    out = tmp_path / "model"
    code = main([
        "convert-original", "--checkpoint", str(original.checkpoint), "--vqvae", str(original.vqvae),
        "--text-tokenizer", str(original.text_tokenizer), "--out", str(out),
        "--config", str(config), "--vqvae-config", str(vqvae_config),
    ])  # fmt: skip
    assert code == 0
    assert f"wrote {out}" in capsys.readouterr().out
    meta = json.loads((out / "pipeline.json").read_text())
    assert meta["jobs"] in (["text_to_image"], {"text_to_image": "transformer"})
    assert meta["text_budget"] == 64 - 3 - 16
    assert meta["sampling"]["text_to_image"]["default"] == {
        "temperature": 1.0, "top_k": 200, "top_p": 0.0, "guidance_scale": 1.0, "min_p": 0.0,
    }  # fmt: skip
    assert meta["semantics"] == "original"
    assert json.loads((out / "conversion.json").read_text())["dtype"] == "fp16"  # the release's own
    with safe_open(out / "transformer" / "model.safetensors", "pt") as f:
        assert f.get_tensor("tok_embeddings.weight").dtype == torch.float16
    pipe = CogViewPipeline.from_pretrained(out, dtype=torch.bfloat16)
    assert pipe.jobs == ("text_to_image",)
    images = pipe.generate("一只可爱的猫", num_images=2, seed=0)
    assert [im.size for im in images] == [(32, 32), (32, 32)]
    assert pipe.generate("一只可爱的猫", num_images=2, seed=0)[1].tobytes() == images[1].tobytes()
    # the same conversion in shards of at most 32 KiB loads to the same images
    sharded = tmp_path / "sharded"
    code = main([
        "convert-original", "--checkpoint", str(original.checkpoint), "--vqvae", str(original.vqvae),
        "--text-tokenizer", str(original.text_tokenizer), "--out", str(sharded),
        "--config", str(config), "--vqvae-config", str(vqvae_config), "--max-shard-gb", str(32 / 2**20),
    ])  # fmt: skip
    assert code == 0 and (sharded / "transformer" / "model.safetensors.index.json").is_file()
    assert len(list((sharded / "transformer").glob("model-*-of-*.safetensors"))) > 2
    again = CogViewPipeline.from_pretrained(sharded, dtype=torch.bfloat16)
    assert [im.tobytes() for im in again.generate("一只可爱的猫", num_images=2, seed=0)] == [
        im.tobytes() for im in images
    ]


def test_cli_errors_exit_2(
    original: OriginalFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m"

    def run(*extra: str) -> str:
        args = ["--vqvae", str(original.vqvae), "--text-tokenizer", str(original.text_tokenizer)]
        assert main(["convert-original", *args, "--out", str(out), *extra]) == 2
        return capsys.readouterr().err

    err = run("--checkpoint", str(tmp_path / "missing"))
    assert "cogview convert-original: error: checkpoint" in err and "does not exist" in err
    assert "neither a preset" in run("--checkpoint", str(original.checkpoint), "--config", "nope")
    # The default (4B, original VQ-VAE) architectures against tiny files: refused, nothing written.
    assert "does not match the model" in run("--checkpoint", str(original.checkpoint))
    assert "--max-shard-gb must be positive" in run(
        "--checkpoint", str(original.checkpoint), "--max-shard-gb", "0"
    )
    assert not out.exists()


@pytest.mark.parametrize("job", ["image_to_text", "super_resolution"])
def test_other_jobs_are_recorded_or_refused_clearly(
    original: OriginalFiles, tmp_path: Path, job: str
) -> None:
    out = tmp_path / "model"
    try:
        convert(original, out, job=job)
    except ValueError as e:  # the pipeline serves the job but not with these weights
        assert f"cannot be served as {job}" in str(e)
        assert_nothing_written(out)
    else:
        assert job in json.loads((out / "pipeline.json").read_text())["jobs"]


def test_weights_that_are_views_of_one_flat_buffer(original: OriginalFiles, tmp_path: Path) -> None:
    # DeepSpeed's fp16 optimizers keep the parameters as views into one flat buffer; torch.save keeps
    # that sharing, so every loaded tensor is a view of one storage. Each must be written on its own.
    flat = torch.cat([v.flatten() for v in original.module.values()])
    module, offset = {}, 0
    for k, v in original.module.items():
        module[k] = flat[offset : offset + v.numel()].view(v.shape)
        offset += v.numel()
    rewrite(original, module)
    convert(original, tmp_path / "model", dtype="fp16")
    with safe_open(tmp_path / "model" / "transformer" / "model.safetensors", "pt") as f:
        assert torch.equal(
            f.get_tensor("layers.1.feed_forward.w2.weight"),
            original.module["transformer.layers.1.mlp.dense_4h_to_h.weight"],
        )
