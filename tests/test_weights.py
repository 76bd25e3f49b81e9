"""Published pretrained weights: each source's checkpoint layout converted by `selma3d
import-weights`, every encoder tensor found where it belongs in the finetuning network, the
by-name load report and its minimum share, and the workflow's ext_<name> runs (dry-run only)."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from selma3d.cli import main as cli
from selma3d.core.errors import InputError
from selma3d.nets import models as M
from selma3d.training.finetune import stored_network

REPO = Path(__file__).resolve().parents[1]
SWIN = {"feature_size": 12, "patch_size": [64, 64, 64]}  # the published 48 has the same names


def _monai_swinvit():
    from monai.networks.nets.swin_unetr import SwinTransformer

    torch.manual_seed(0)
    return SwinTransformer(in_chans=1, embed_dim=12, window_size=(7, 7, 7), patch_size=(2, 2, 2),
                           depths=[2, 2, 2, 2], num_heads=[3, 6, 12, 24], mlp_ratio=4.0, qkv_bias=True, spatial_dims=3)


def _import(tmp_path, src, fmt, net, *extra, min_share=1.0):
    out = tmp_path / f"{fmt}.pt"
    assert cli(["import-weights", str(src), "--format", fmt, "--out", str(out), "--net", json.dumps(net), *extra]) == 0
    payload = torch.load(out, map_location="cpu", weights_only=False)
    net = M.build_segmentation_net(stored_network(payload))  # what finetuning builds from it
    assert M.load_pretrained(net, payload["weights"], min_share=min_share) == len(payload["weights"])
    return payload, net.state_dict()


def _encoder(own, backbone):
    return [k for k in own if k.startswith(tuple(M.encoder_prefixes(backbone)))]


def test_tang_model_swinvit_maps_every_swinvit_tensor(tmp_path):
    """model_swinvit.pt: {"state_dict": module.<swinViT name>} with the MLP as fc1/fc2
    (what MONAI's SwinUNETR.load_from reads), plus the SSL heads of SSLHead."""
    sv = _monai_swinvit()
    sd = {"module." + k.replace(".mlp.linear1.", ".mlp.fc1.").replace(".mlp.linear2.", ".mlp.fc2."): v.clone()
          for k, v in sv.state_dict().items()}
    planted = torch.full_like(sd["module.layers2.0.blocks.1.mlp.fc1.weight"], 0.123)
    sd["module.layers2.0.blocks.1.mlp.fc1.weight"] = planted
    sd["module.rotation_head.weight"] = torch.zeros(4, 192)
    torch.save({"epoch": 100, "state_dict": sd, "optimizer": {}}, tmp_path / "model_swinvit.pt")
    payload, own = _import(tmp_path, tmp_path / "model_swinvit.pt", "monai_swinvit", SWIN)
    assert payload["net"]["feature_size"] == 12 and payload["report"]["share"] == 1.0
    assert payload["report"]["unused_source"] == ["rotation_head.weight"]
    assert torch.equal(own["swinViT.layers2.0.blocks.1.mlp.linear1.weight"], planted)
    enc = _encoder(own, "swinunetr")
    assert len(enc) == len(sv.state_dict()) == 126
    for k, v in sv.state_dict().items():
        if k != "layers2.0.blocks.1.mlp.linear1.weight":
            assert torch.equal(own["swinViT." + k], v), k


def test_monai_disruptive_autoencoder_weights_follow_filter_swinunetr(tmp_path):
    sv = _monai_swinvit()
    sd = {}
    for k, v in sv.state_dict().items():  # the inverse of MONAI's filter_swinunetr renaming
        sd["encoder." + (k if k.startswith("patch_embed") else k[:10] + "0." + k[10:])] = v.clone()
    sd["encoder.layers3.0.0.blocks.0.attn.proj.weight"] = torch.full((48, 48), -0.5)
    sd["encoder.mask_token"] = torch.zeros(1, 1, 12)
    torch.save({"model": sd}, tmp_path / "ssl_pretrained_weights.pth")
    payload, own = _import(tmp_path, tmp_path / "ssl_pretrained_weights.pth", "monai_swin_dae", SWIN)
    assert (own["swinViT.layers3.0.blocks.0.attn.proj.weight"] == -0.5).all()
    assert payload["report"]["share"] == 1.0 and payload["report"]["unused_source"] == ["encoder.mask_token"]


def _lightning(tmp_path, net_kind):
    """An LSM-FM Lightning checkpoint: student/teacher networks, heads, hyper_parameters."""
    from monai.networks.nets import SwinUNETR, UNet

    torch.manual_seed(1)
    if net_kind == "swinunetr":
        make = lambda: SwinUNETR(in_channels=1, out_channels=8, feature_size=12, use_checkpoint=False)
        hp = {"model": {"embed_dim": 8, "swinunetr": {"feature_size": 12}}}
    else:
        make = lambda: UNet(3, 1, 8, channels=(8, 16, 32, 64, 128), strides=(2, 2, 2, 1), num_res_units=2,
                            norm="BATCH")
        hp = {"model": {"embed_dim": 8, "unet": {"channels": [8, 16, 32, 64, 128], "strides": [2, 2, 2, 1],
                                                 "num_res_units": 2}}}
    student, teacher = make(), make()
    sd = {f"student_encoder.{k}": v.clone() for k, v in student.state_dict().items()}
    sd.update({f"teacher_encoder.{k}": v.clone() + 1 for k, v in teacher.state_dict().items()})
    sd["reconstruction_head.decoder.0.weight"] = torch.zeros(64, 8, 3, 3, 3)
    sd["ema_decay"] = torch.tensor(0.994)
    path = tmp_path / f"pretrained_{net_kind}_image_only.ckpt"
    torch.save({"epoch": 3, "global_step": 10, "pytorch-lightning_version": "2.5.0", "state_dict": sd,
                "hyper_parameters": hp}, path)
    return path, student.state_dict(), teacher.state_dict()


def test_lsm_fm_swinunetr_student_and_teacher_land_in_the_finetuning_net(tmp_path):
    path, student, teacher = _lightning(tmp_path, "swinunetr")
    payload, own = _import(tmp_path, path, "lsm_fm_swinunetr", SWIN)
    for k, v in student.items():
        if not k.startswith("out."):  # encoder and decoder; the output layer is embedding-wide
            assert torch.equal(own[k], v), k
    assert payload["report"]["share"] == 1.0
    assert not any(k.startswith("out.") for k in payload["weights"])
    assert "teacher_encoder.swinViT.patch_embed.proj.weight" in payload["report"]["unused_source"]
    payload, own = _import(tmp_path, path, "lsm_fm_swinunetr", SWIN, "--branch", "teacher")
    assert torch.equal(own["swinViT.layers4.0.blocks.1.attn.qkv.weight"], teacher["swinViT.layers4.0.blocks.1.attn.qkv.weight"] + 1)


def test_lsm_fm_unet_is_refused_naming_why(tmp_path, capsys):
    path, _, _ = _lightning(tmp_path, "unet")
    assert cli(["import-weights", str(path), "--format", "lsm_fm_unet", "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "residual units" in err and "num_res_units 2" in err
    assert not (tmp_path / "x.pt").exists()


def _dino3d_state(dim=48, depth=2, patch=8, side=3, chunks=True):
    """DINOv2-3D ViT tensors as 3DINO names them (teacher checkpoint: backbone.* and heads)."""
    g = torch.Generator().manual_seed(2)
    r = lambda *s: torch.randn(*s, generator=g)
    sd = {"cls_token": r(1, 1, dim), "mask_token": r(1, dim), "pos_embed": r(1, 1 + side**3, dim),
          "patch_embed.proj.weight": r(dim, 1, patch, patch, patch), "patch_embed.proj.bias": r(dim),
          "norm.weight": r(dim), "norm.bias": r(dim)}
    for i in range(depth):
        b = f"blocks.0.{i}." if chunks else f"blocks.{i}."
        sd.update({b + "norm1.weight": r(dim), b + "norm1.bias": r(dim), b + "attn.qkv.weight": r(3 * dim, dim),
                   b + "attn.qkv.bias": r(3 * dim), b + "attn.proj.weight": r(dim, dim), b + "attn.proj.bias": r(dim),
                   b + "ls1.gamma": r(dim), b + "norm2.weight": r(dim), b + "norm2.bias": r(dim),
                   b + "mlp.fc1.weight": r(2 * dim, dim), b + "mlp.fc1.bias": r(2 * dim),
                   b + "mlp.fc2.weight": r(dim, 2 * dim), b + "mlp.fc2.bias": r(dim), b + "ls2.gamma": r(dim)})
    return sd


@pytest.mark.parametrize("size", [24, 32])  # the pretraining grid (3^3), and one interpolated to 4^3
def test_3dino_vit_maps_the_whole_encoder_with_layerscale_folded(tmp_path, size):
    sd = _dino3d_state()
    ckpt = {"teacher": {**{"backbone." + k: v for k, v in sd.items()}, "dino_head.mlp.0.weight": torch.zeros(4, 48)}}
    torch.save(ckpt, tmp_path / "teacher_checkpoint.pth")
    net = {"patch_size": [size] * 3, "num_heads": 4}
    payload, own = _import(tmp_path, tmp_path / "teacher_checkpoint.pth", "dino3d_vit", net, min_share=0.99)
    assert payload["net"]["num_layers"] == 2 and payload["net"]["patch_size"] == [size] * 3
    assert payload["net"]["hidden_size"] == 48 and payload["net"]["mlp_dim"] == 96
    assert torch.equal(own["vit.blocks.1.attn.qkv.weight"], sd["blocks.0.1.attn.qkv.weight"])
    assert torch.allclose(own["vit.blocks.0.attn.out_proj.weight"],
                          sd["blocks.0.0.ls1.gamma"][:, None] * sd["blocks.0.0.attn.proj.weight"])
    assert torch.allclose(own["vit.blocks.1.mlp.linear2.bias"], sd["blocks.0.1.ls2.gamma"] * sd["blocks.0.1.mlp.fc2.bias"])
    pos = own["vit.patch_embedding.position_embeddings"]
    assert pos.shape == (1, (size // 8) ** 3, 48)
    if size == 24:  # same grid: the patch positions, class position dropped, unchanged
        assert torch.equal(pos[0], sd["pos_embed"][0, 1:])
    rep = payload["report"]
    # MONAI's TransformerBlock has a cross-attention norm DINOv2 lacks: reported, by name
    assert rep["missing_encoder"] == [f"vit.blocks.{i}.norm_cross_attn.{w}" for i in range(2) for w in ("weight", "bias")]
    assert 0.99 < rep["share"] < 1.0
    assert {"cls_token", "mask_token", "dino_head.mlp.0.weight"} <= set(rep["unused_source"])


def test_layerscale_folding_computes_the_same_block(tmp_path):
    """One DINOv2 block (x + g1*attn(n1 x); x + g2*mlp(n2 x)) equals MONAI's block after folding."""
    sd = _dino3d_state(depth=1, chunks=False)
    torch.save(sd, tmp_path / "vit.pth")
    payload, _ = _import(tmp_path, tmp_path / "vit.pth", "dino3d_vit", {"patch_size": [24] * 3, "num_heads": 4},
                           min_share=0.99)
    net = M.build_segmentation_net(stored_network(payload))
    M.load_pretrained(net, payload["weights"], min_share=0.9)
    x = torch.randn(2, 5, 48)
    ln = lambda t, p: torch.nn.functional.layer_norm(t, (48,), sd[p + ".weight"], sd[p + ".bias"])
    h = ln(x, "blocks.0.norm1")
    qkv = (h @ sd["blocks.0.attn.qkv.weight"].T + sd["blocks.0.attn.qkv.bias"]).reshape(2, 5, 3, 4, 12).permute(2, 0, 3, 1, 4)
    att = torch.softmax(qkv[0] @ qkv[1].transpose(-1, -2) / 12**0.5, -1) @ qkv[2]
    att = att.transpose(1, 2).reshape(2, 5, 48) @ sd["blocks.0.attn.proj.weight"].T + sd["blocks.0.attn.proj.bias"]
    y = x + sd["blocks.0.ls1.gamma"] * att
    m = torch.nn.functional.gelu(ln(y, "blocks.0.norm2") @ sd["blocks.0.mlp.fc1.weight"].T + sd["blocks.0.mlp.fc1.bias"])
    y = y + sd["blocks.0.ls2.gamma"] * (m @ sd["blocks.0.mlp.fc2.weight"].T + sd["blocks.0.mlp.fc2.bias"])
    with torch.no_grad():
        assert torch.allclose(net.vit.blocks[0](x), y, atol=1e-4)


def _plain_conv_unet_state(net):
    """nnssl network_weights of a PlainConvUNet (dynamic_network_architectures names) whose
    stages have the shapes of ``net``'s DynUNet levels."""
    own = net.state_dict()
    levels = ["input_block"] + sorted({k.split(".")[1] for k in own if k.startswith("downsamples.")}, key=int)
    levels = [lv if lv == "input_block" else f"downsamples.{lv}" for lv in levels] + ["bottleneck"]
    sd = {}
    for s, lv in enumerate(levels):
        for c in (0, 1):
            w = own[f"{lv}.conv{c + 1}.conv.weight"]
            base = f"encoder.stages.{s}.0.convs.{c}."
            sd[base + "conv.weight"] = torch.randn_like(w)
            sd[base + "conv.bias"] = torch.randn(w.shape[0])
            sd[base + "norm.weight"] = torch.randn(w.shape[0])
            sd[base + "norm.bias"] = torch.randn(w.shape[0])
            sd[base + "all_modules.0.weight"] = sd[base + "conv.weight"]  # aliases, as nn.Module registers them
            sd[base + "all_modules.1.weight"] = sd[base + "norm.weight"]
    sd["decoder.seg_layers.0.weight"] = torch.zeros(1, 32, 1, 1, 1)
    return sd, levels


def test_nnssl_plain_conv_unet_maps_onto_dynunet_and_resenc_is_refused(tmp_path, capsys):
    net_cfg = {"backbone": "dynunet", "patch_size": [32, 32, 32]}
    sd, levels = _plain_conv_unet_state(M.build_segmentation_net(net_cfg))
    torch.save({"network_weights": {"module." + k: v for k, v in sd.items()}, "trainer_name": "x"},
               tmp_path / "checkpoint_final.pth")
    payload, own = _import(tmp_path, tmp_path / "checkpoint_final.pth", "nnssl", {"patch_size": [32, 32, 32]})
    assert payload["report"]["share"] == 1.0
    for s, lv in enumerate(levels):
        assert torch.equal(own[f"{lv}.conv2.conv.weight"], sd[f"encoder.stages.{s}.0.convs.1.conv.weight"])
        assert torch.equal(own[f"{lv}.norm1.bias"], sd[f"encoder.stages.{s}.0.convs.0.norm.bias"])
    resenc = {"network_weights": {"encoder.stem.convs.0.conv.weight": torch.zeros(32, 1, 3, 3, 3),
                                  "encoder.stages.0.blocks.0.conv1.conv.weight": torch.zeros(32, 32, 3, 3, 3)}}
    torch.save(resenc, tmp_path / "resenc.pth")
    assert cli(["import-weights", str(tmp_path / "resenc.pth"), "--format", "nnssl", "--out", str(tmp_path / "r.pt")]) == 2
    err = capsys.readouterr().err
    assert "resenc.pth" in err and "ResEnc-L" in err


def test_load_report_names_every_mismatch_and_min_share_fails_naming_the_checkpoint(caplog):
    cfg = {"backbone": "unet", "patch_size": [32, 32, 32], "features": [8, 8, 16, 32, 64, 8]}
    src, dst = M.build_segmentation_net(cfg), M.build_segmentation_net(cfg)
    enc = {k: v for k, v in src.state_dict().items() if k.startswith(tuple(M.encoder_prefixes("unet")))}
    partial = {k: v for k, v in enc.items() if not k.startswith("down_4.")}  # the deepest block: most elements
    partial["conv_0.conv_0.conv.weight"] = torch.zeros(3, 1, 3, 3, 3)  # misshapen
    partial["head.weight"] = torch.zeros(2)  # unexpected
    rep = M.load_report(dst, partial)
    assert ("conv_0.conv_0.conv.weight", (3, 1, 3, 3, 3), (8, 1, 3, 3, 3)) in rep.misshapen
    assert rep.unexpected == ["head.weight"] and 0.1 < rep.share < 0.5
    assert set(rep.missing_encoder) == {k for k in enc if k.startswith("down_4.")} | {"conv_0.conv_0.conv.weight"}
    with caplog.at_level(logging.WARNING, logger="selma3d.nets.models"), pytest.raises(InputError) as err:
        M.load_pretrained(dst, partial, source="enc.pt")  # default finetune.min_loaded_share 0.9
    assert "enc.pt" in str(err.value) and "90%" in str(err.value) and "encoder tensors" in str(err.value)
    assert "misshapen: conv_0.conv_0.conv.weight" in caplog.text and "unexpected (not in the network): head.weight" in caplog.text
    assert "encoder tensor not loaded: down_4.convs.conv_0.conv.weight" in caplog.text
    before = dst.state_dict()["conv_0.conv_1.conv.weight"].clone()
    n = M.load_pretrained(dst, partial, min_share=0.1)
    assert n == len(rep.loaded) and torch.equal(dst.state_dict()["conv_0.conv_1.conv.weight"], enc["conv_0.conv_1.conv.weight"])
    assert not torch.equal(before, enc["conv_0.conv_1.conv.weight"])


def test_import_fails_below_min_share_naming_the_checkpoint(tmp_path, capsys):
    sv = _monai_swinvit()
    sd = {"module." + k: v for k, v in sv.state_dict().items() if not k.startswith("layers4.")}  # fc1/fc2 -> kept as linear
    torch.save({"state_dict": sd}, tmp_path / "cut.pt")
    args = ["import-weights", str(tmp_path / "cut.pt"), "--format", "monai_swinvit", "--out", str(tmp_path / "o.pt"),
            "--net", json.dumps(SWIN)]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert "cut.pt" in err and "encoder tensors" in err and not (tmp_path / "o.pt").exists()
    assert cli(args + ["--min-share", "0.01"]) == 0 and (tmp_path / "o.pt").exists()


# ------------------------------------------------------------------------------- workflow


def _tiny_config(tmp_path, ckpt: Path, sha: str | None) -> Path:
    cfg = {
        "results_dir": str(tmp_path / "r"),
        "model": {"backbone": "unet", "patch_size": [32, 32, 32], "features": [8, 8, 16, 32, 64, 8]},
        "pretrain": {"strategies": []},
        "finetune": {"strategies": ["scratch", "ext_tang", "scratch_ext_tang"], "modes": ["full"], "budgets": [1],
                     "seeds": [0], "steps": 2},
        "evaluate": {"protocols": ["selma3d2026"]},
        "pretrained": {"tang": {"url": ckpt.as_uri(), "sha256": sha, "format": "monai_swinvit",
                                "net": {"backbone": "swinunetr", "feature_size": 12, "patch_size": [64, 64, 64]}}},
    }
    path = tmp_path / "ext.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_dry_run_plans_download_and_import_for_external_weights(tmp_path):
    ckpt = tmp_path / "model_swinvit.pt"
    ckpt.write_bytes(b"not fetched by a dry-run")
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    cmd = [sys.executable, "-m", "snakemake", "all", "-n", "--nolock", "--configfile"]
    res = subprocess.run(cmd + [str(_tiny_config(tmp_path, ckpt, sha))], cwd=REPO, capture_output=True, text=True,
                         timeout=600, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    jobs = {ln.split()[0]: int(ln.split()[1]) for ln in res.stdout.splitlines()
            if len(ln.split()) == 2 and ln.split()[1].isdigit()}
    assert jobs["download_weights"] == 1 and jobs["import_weights"] == 1 and jobs["finetune"] == 3
    assert "pretrain" not in jobs and f"{tmp_path}/r/weights/tang/encoder.pt" in res.stdout
    res = subprocess.run(cmd + [str(_tiny_config(tmp_path, ckpt, None))], cwd=REPO, capture_output=True, text=True,
                         timeout=600, check=False)
    assert res.returncode != 0 and "pretrained.tang.sha256 is null" in res.stdout + res.stderr


def test_fetch_file_links_a_local_checkpoint_and_checks_its_sha256(tmp_path):
    from selma3d.data.download import ChecksumMismatch, fetch_file

    src = tmp_path / "w.pt"
    src.write_bytes(b"weights")
    sha = hashlib.sha256(b"weights").hexdigest()
    out = fetch_file(src.as_uri(), tmp_path / "dl" / "checkpoint", sha, progress=False)
    assert out.read_bytes() == b"weights"
    with pytest.raises(ChecksumMismatch):
        fetch_file(str(src), tmp_path / "dl2" / "checkpoint", "0" * 64, progress=False)
    with pytest.raises(InputError, match="sha256"):
        fetch_file(str(src), tmp_path / "dl3" / "checkpoint", None, progress=False)
    assert not (tmp_path / "dl2" / "checkpoint").exists()


def test_shipped_manifest_entries_resolve_and_unpublished_checksums_are_null():
    from selma3d.config import load_config
    from selma3d.training import runplan

    cfg = load_config([REPO / "config" / "manifests" / "pretrained_weights.yaml"], basedir=REPO)
    assert cfg["pretrained"]["swinvit_tang"]["sha256"] is None
    assert cfg["pretrained"]["swin_dae_monai"]["sha256"].startswith("c3564f40")
    for name in cfg["pretrained"]:
        net = runplan.finetune_network(runplan.EXTERNAL_PREFIX + name, cfg)
        assert net == runplan.finetune_network("scratch_" + runplan.EXTERNAL_PREFIX + name, cfg)
    cfg["finetune"]["strategies"] = ["ext_swinvit_tang", "scratch_ext_swinvit_tang"]
    with pytest.raises(ValueError, match="sha256 is null"):
        runplan.check_strategies(cfg)
    cfg["finetune"]["strategies"] = ["scratch_ext_swinvit_tang"]  # the baseline needs no weights
    runplan.check_strategies(cfg)
    assert runplan.baseline_for("ext_swinvit_tang", ["scratch", "scratch_ext_swinvit_tang"]) == "scratch_ext_swinvit_tang"
