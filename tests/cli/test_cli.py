"""The ``samadapt`` command, run in-process through ``main([...])``."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import threading
from functools import partial

import pytest

import samadapt
from samadapt import cli
from samadapt.errors import ConfigError
from samadapt.models.checkpoints import OFFICIAL_CHECKPOINTS
from samadapt.models.family import model_types
from samadapt.sizes import strategy_size


# ---------------------------------------------------------------------------- info
def test_info_describes_model_types_strategies_and_trainable_counts(capsys):
    assert cli.main(["info"]) == 0
    text = capsys.readouterr().out
    for card in model_types().values():  # SAM 1 and SAM 2.1
        assert card.name in text and card.tag in text and (card.checkpoint or card.builtin_weights or "-") in text
    for strategy in samadapt.STRATEGIES.values():
        assert strategy.name in text and strategy.description in text
    assert "93.74M" in text and "4.06M" in text  # vit_b total, decoder-only trainable

    assert cli.main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in info["model_types"]] == list(model_types())
    assert {s["name"] for s in info["strategies"]} == set(samadapt.STRATEGIES)
    vit_b = info["parameters"]["vit_b"]
    assert vit_b["base"] == 93_735_472
    for strategy, row in vit_b["strategies"].items():
        size = strategy_size("vit_b", strategy)
        assert row["trainable"] == size.trainable and row["total"] == size.total
        assert row["adapter_bytes"] == size.adapter_bytes
    counted = set(model_types()) - set(info["unavailable"])  # SAM 2.1 types need Meta's sam2 installed
    assert set(info["parameters"]) == counted and counted >= set(samadapt.MODEL_TYPES)


# ---------------------------------------------------------------------------- list
def test_list(capsys, make_mini, samadapt_home_dir):
    assert cli.main(["list"]) == 0
    assert "no adapters in" in capsys.readouterr().out

    model = samadapt.adapt(make_mini(), "lora")
    path = samadapt.publish_adapter(model, "demo", card={"metrics": {"fine_tuned": {"mean_iou": 0.6543}}})
    samadapt.publish_adapter(samadapt.adapt(make_mini(), "decoder"), "other")
    assert cli.main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith("demo-mini-lora"))
    for cell in ("mini", "lora", "demo", "mIoU 65.43", str(path)):
        assert cell in row
    assert any(line.startswith("other-mini ") and " - " in line for line in lines)  # no metric in its card

    assert cli.main(["list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [a["name"] for a in listed] == ["demo-mini-lora", "other-mini"]


# ---------------------------------------------------------------------------- download-checkpoint
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving ``tmp_path/www``; yields (base URL, folder, request log)."""
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []

    class Handler(_QuietHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root, requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def served_checkpoint(http_server):
    url, root, requests = http_server
    data = bytes(range(256)) * 4096  # 1 MiB: several progress-bar chunks
    (root / "mirror.pth").write_bytes(data)
    return f"{url}/mirror.pth", data, hashlib.sha256(data).hexdigest(), requests


def test_download_checkpoint_verifies_and_moves_into_place(served_checkpoint, tmp_path, capsys):
    url, data, digest, _ = served_checkpoint
    dest_dir = tmp_path / "ckpts"
    assert cli.main(["download-checkpoint", "vit_h", "--url", url, "--dir", str(dest_dir), "--sha256", digest]) == 0
    dest = dest_dir / "sam_vit_h_4b8939.pth"
    assert dest.read_bytes() == data
    assert [p.name for p in dest_dir.iterdir()] == [dest.name]  # no .part left
    out = capsys.readouterr()
    assert str(dest) in out.out and "sha256 verified" in out.out


def test_download_checkpoint_defaults_to_samadapt_home(served_checkpoint, monkeypatch, samadapt_home_dir, capsys):
    """Without --dir and --sha256: SAMADAPT_HOME/checkpoints and the official digest (patched here
    to the served file's, instead of downloading 375 MB)."""
    url, data, digest, _ = served_checkpoint
    name = "sam_vit_b_01ec64.pth"
    monkeypatch.setitem(OFFICIAL_CHECKPOINTS, name, dataclasses.replace(OFFICIAL_CHECKPOINTS[name], sha256=digest))
    assert cli.main(["download-checkpoint", "vit_b", "--url", url, "--no-progress"]) == 0
    assert (samadapt_home_dir / "checkpoints" / name).read_bytes() == data
    assert capsys.readouterr().err == ""  # --no-progress: no bar


def test_download_checkpoint_with_the_wrong_sha256_leaves_nothing(served_checkpoint, tmp_path, capsys):
    url, _, digest, _ = served_checkpoint
    dest_dir = tmp_path / "ckpts"
    assert cli.main(["download-checkpoint", "vit_l", "--url", url, "--dir", str(dest_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("samadapt: error: ") and "Traceback" not in err
    assert digest in err and OFFICIAL_CHECKPOINTS["sam_vit_l_0b3195.pth"].sha256 in err and "corrupt" in err
    assert list(dest_dir.iterdir()) == []  # neither the file nor its .part


def test_download_checkpoint_404(http_server, tmp_path, capsys):
    url, _, requests = http_server
    dest_dir = tmp_path / "ckpts"
    assert (
        cli.main(
            ["download-checkpoint", "vit_b", "--url", f"{url}/missing.pth", "--dir", str(dest_dir), "--no-progress"]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("samadapt: error: downloading ") and "404" in err and str(dest_dir) in err
    assert requests == ["/missing.pth"]
    assert list(dest_dir.iterdir()) == []


def test_download_checkpoint_of_an_unknown_type_is_a_usage_error(capsys):
    assert cli.main(["download-checkpoint", "mini"]) == 2
    assert "invalid choice: 'mini'" in capsys.readouterr().err


# ---------------------------------------------------------------------------- parser, errors, extension
def test_usage(capsys):
    assert cli.main([]) == 2
    assert "required: command" in capsys.readouterr().err
    assert cli.main(["--help"]) == 0
    help_text = capsys.readouterr().out
    for sub in cli.SUBCOMMANDS:
        assert sub.name.split()[0] in help_text  # nested commands show their group
    assert cli.main(["--version"]) == 0
    assert samadapt.__version__ in capsys.readouterr().out


def test_new_subcommands_are_one_function_and_one_line(monkeypatch, capsys):
    """What ``data summary`` and ``eval`` will do: nested names create their group; library errors
    print ``samadapt: error: <message>`` and exit 2, without a traceback."""

    def add_summary(parser):
        parser.add_argument("dataset")

    def run_summary(args):
        print(f"summary of {args.dataset}")
        return 0

    def run_eval(args):
        raise ConfigError("`split` is 'tset'; choose one of ['train', 'val', 'test']")

    monkeypatch.setattr(
        cli,
        "SUBCOMMANDS",
        [
            *cli.SUBCOMMANDS,
            cli.Subcommand("extra summary", "summarise a dataset", add_summary, run_summary),
            cli.Subcommand("extra-eval", "evaluate an adapter", lambda p: None, run_eval),
        ],
    )
    assert cli.main(["extra", "summary", "taco"]) == 0
    assert capsys.readouterr().out == "summary of taco\n"
    assert cli.main(["extra-eval"]) == 2
    captured = capsys.readouterr()
    assert captured.err == "samadapt: error: `split` is 'tset'; choose one of ['train', 'val', 'test']\n"
    assert cli.main(["extra"]) == 2  # a group alone is a usage error
    assert cli.main(["list"]) == 0  # the built-in commands are still there


def test_data_summary_of_generated_demo_data(tmp_path, capsys):
    from samadapt.data.synthetic import make_demo_dataset

    root = make_demo_dataset(tmp_path / "demo", domain="waste", n_train=3, n_val=2, seed=0, progress=False)
    assert cli.main(["data", "summary", "--dataset", "demo", "--data-root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "[train]" in out and "[val]" in out and "images: 3" in out and "images: 2" in out
    assert cli.main(["data", "summary", "--dataset", "demo", "--data-root", str(root), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["splits"]) == {"train", "val"}
    assert data["images"] == 5


def test_data_summary_names_a_missing_root(tmp_path, capsys):
    assert cli.main(["data", "summary", "--dataset", "taco", "--data-root", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_eval_is_wired_to_the_evaluation_runner(capsys):
    assert cli.main(["eval", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--adapter" in out and "--prompt" in out


# ---------------------------------------------------------------------------- choices shown in --help (issue 18)
def test_mixed_precision_offers_no_fp16_bf16_and_not_none(capsys):
    """`--mixed-precision` left out means the launcher's choice; "none" beside "no" was one more
    spelling of nothing: it is not offered, and refused by name."""
    assert cli.main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--mixed-precision {no,fp16,bf16}" in text and "{no,fp16,bf16,none}" not in text
    assert "--log-with {tensorboard,wandb,mlflow,comet_ml,aim,clearml,dvclive,all,none}" in text  # none = no tracker
    assert cli.main(["train", "--mixed-precision", "none"]) == 2
    assert "argument --mixed-precision: invalid choice: 'none' (choose from 'no', 'fp16', 'bf16')" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize("command", ["eval", "segment"])
def test_model_option_lists_the_model_types(command, capsys):
    names = sorted(model_types())  # both families: SAM 1's and SAM 2.1's
    assert "sam2.1_hiera_tiny" in names and "vit_h" in names
    assert cli.main([command, "--help"]) == 0
    assert f"--model{{{','.join(names)}}}" in capsys.readouterr().out.replace("\n", "").replace(" ", "")
    assert cli.main([command, "--model", "vit_x", "--images", "x", "--auto"]) == 2
    choices = ", ".join(repr(n) for n in names)
    assert f"argument --model: invalid choice: 'vit_x' (choose from {choices})" in capsys.readouterr().err


def test_download_checkpoint_of_a_sam2_type_uses_its_card(served_checkpoint, tmp_path, capsys):
    """SAM 2.1 types download like SAM 1's: Meta's SAM 2.1 folder, the card's file name and sha256."""
    from samadapt.models.checkpoints import downloadable_checkpoints
    from samadapt.models.sam2_family import SAM2_MODEL_TYPES

    offered = downloadable_checkpoints()
    tiny = SAM2_MODEL_TYPES["sam2.1_hiera_tiny"]
    assert (
        offered["sam2.1_hiera_tiny"].url
        == "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_tiny.pt"
    )
    assert offered["sam2.1_hiera_tiny"].sha256 == tiny.sha256 and "sam2.1_hiera_test" not in offered  # no file
    url, data, digest, _ = served_checkpoint
    dest_dir = tmp_path / "ckpts"
    argv = ["download-checkpoint", "sam2.1_hiera_tiny", "--url", url, "--dir", str(dest_dir), "--no-progress"]
    assert cli.main([*argv, "--sha256", digest]) == 0
    assert (dest_dir / "sam2.1_hiera_tiny.pt").read_bytes() == data
    assert cli.main(argv) == 2  # the card's digest: the served bytes are not Meta's file, nothing is kept
    assert "sha256" in capsys.readouterr().err and [p.name for p in dest_dir.iterdir()] == ["sam2.1_hiera_tiny.pt"]
