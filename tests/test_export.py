"""Challenge submission: a finetuned run exported as a SELMA3D algorithm (2024, 2025, 2026),
run locally without Docker on real c-Fos patches, voxel for voxel equal to the infer rule.

Docker itself is not available where the tests run: the image build is not tested, the build
folder's contents and the entry point it starts are."""

from __future__ import annotations

import json
import subprocess
import tarfile
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from selma3d import io
from selma3d.core.errors import InputError
from selma3d.inference import algorithm as A
from selma3d.inference.export import RUNTIME_PACKAGES, export_algorithm, infer_settings, source_archive

REPO = Path(__file__).resolve().parents[1]
RUN = "mae/full/b2_s0"
#: the net of the tests: a tiny BasicUNet; settings as the schema's but a cheaper overlap
NET = {"backbone": "unet", "patch_size": [32, 32, 32], "features": [2, 2, 4, 4, 4, 2]}
#: a per-structure post-processing entry as a tuned model carries it
POSTPROCESS = {"per": "structure", "values": {"cfos_neuron": {"threshold": 0.52, "min_size": 3}}}
GEOMETRY = io.ImageGeometry(3, (100, 100, 100), (1.625, 1.625, 6.0), (12.5, -4.0, 30.0),
                            (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))


def make_run(results: Path, postprocess: dict | None = None) -> Path:
    """A finetuning run folder as the finetune rule leaves it (model.pt payload, train_log.csv)."""
    from selma3d.nets.models import build_segmentation_net

    run = results / "finetune" / RUN
    run.mkdir(parents=True)
    torch.manual_seed(3)
    net = build_segmentation_net(NET)
    payload = {"config": NET, "state_dict": net.state_dict(), "mode": "full", "normalize": "percentile",
               "ignore_label": None, "background_values": (0,), "best_val_dice": 0.4321, "best_step": 39,
               "pretrained_tensors": 12}
    if postprocess:
        payload["postprocess"] = postprocess
    torch.save(payload, run / "model.pt")
    pd.DataFrame({"step": range(40), "loss": np.linspace(1.0, 0.4, 40),
                  "val_dice": [0.3 if s == 19 else 0.4321 if s == 39 else np.nan for s in range(40)]}
                 ).to_csv(run / "train_log.csv", index=False)
    return run


@pytest.fixture(scope="module")
def settings():
    s = infer_settings()  # the schema's defaults, as the workflow resolves them
    assert {"overlap", "threshold", "sw_batch_size", "blend", "min_component_size"} <= set(s)
    return {**s, "overlap": 0.25, "mirror_axes": []}  # cheaper; the TTA path has its own test


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("results"), POSTPROCESS)


@pytest.fixture(scope="module")
def images(real_data, tmp_path_factory):
    """Two real c-Fos patches (brain 753) as the challenge ships test cases: .mha and .tif."""
    folder = tmp_path_factory.mktemp("images")
    a = io.read_volume(real_data / "cfos_brain753" / "raw" / "patchvolume_753_1.nii.gz").data
    b = io.read_volume(real_data / "cfos_brain753" / "raw" / "patchvolume_753_2.nii.gz").data
    io.write_mha(folder / "cfos_neuron_753_1.mha", a.astype(np.uint16), geometry=GEOMETRY)
    io.write_tiff_stack(folder / "cfos_neuron_753_2.tif", b.astype(np.uint16))
    return folder


@pytest.fixture(scope="module")
def builds(run_dir, settings, tmp_path_factory):
    out = tmp_path_factory.mktemp("build")
    return {year: export_algorithm(run_dir, year, out / str(year), settings, allow_dirty=True)
            for year in (2024, 2025, 2026)}


def test_case_postprocess_per_structure_else_infer_settings():
    from selma3d.inference.patches import case_postprocess

    s = {"threshold": 0.5, "min_component_size": 0}
    payload = {"postprocess": {"per": "structure", "values": {"cfos_neuron": {"threshold": 0.7, "min_size": 5,
                                                                              "peak": 0.99},
                                                              "cell_nuclei": {"threshold": 0.4, "min_size": 2}}}}  # calibrated before peaks: none
    assert case_postprocess(payload, s, "cfos_neuron") == (0.7, 5, 0.99)
    assert case_postprocess(payload, s, "cell_nuclei") == (0.4, 2, 0.0)
    assert case_postprocess(payload, s, "microglia") == (0.5, 0, 0.0)  # unseen structure
    assert case_postprocess(payload, s, None) == (0.5, 0, 0.0)
    assert case_postprocess({}, s, "cfos_neuron") == (0.5, 0, 0.0)
    per_category = {"postprocess": {"per": "category", "values": {"isolated_sparse": {"threshold": 0.3, "min_size": 4}}}}
    assert case_postprocess(per_category, s, "cfos_neuron") == (0.3, 4, 0.0)  # c-Fos is isolated sparse
    assert case_postprocess(payload, {**s, "use_stored_postprocess": False}, "cfos_neuron") == (0.5, 0, 0.0)


def test_segment_case_takes_the_tta_path_when_mirror_axes_are_set():
    from selma3d.inference.patches import segment_case
    from selma3d.inference.tta import predict_with_tta
    from selma3d.nets.models import build_segmentation_net
    from selma3d.preprocess.normalize import normalize

    torch.manual_seed(1)
    net = build_segmentation_net(NET).eval()
    image = np.random.default_rng(0).gamma(2.0, 80.0, (40, 36, 34)).astype(np.uint16)
    s = {"overlap": 0.25, "threshold": 0.5, "sw_batch_size": 2, "blend": "gaussian", "min_component_size": 0,
         "mirror_axes": [0, 2]}
    mask = segment_case(net, {"config": NET, "normalize": "percentile"}, image, s)
    prob = predict_with_tta(net, normalize(image.astype(np.float32)), (32, 32, 32), "cpu", overlap=0.25,
                            mirror_axes=(0, 2), sw_batch_size=2)
    assert mask.dtype == np.uint8 and np.array_equal(mask, (prob > 0.5).astype(np.uint8))
    with pytest.raises(InputError, match="finite"):
        segment_case(net, {"config": NET}, np.full((8, 8, 8), np.nan), s, source="x.mha")


@pytest.mark.parametrize("year", [2024, 2025, 2026])
def test_build_folder_layout(builds, run_dir, year):
    build = builds[year]
    ed = A.EDITIONS[year]
    names = {p.name for p in build.iterdir()}
    assert {"Dockerfile", ".dockerignore", ed.entry_point, "model", "model.tar.gz", "manifest.json", "README.md",
            "requirements.txt", "constraints.txt", "selma3d-src.tar.gz", "do_test_run.sh"} <= names
    # the weights byte for byte, the settings beside them, the same two files in the tarball
    assert (build / "model" / "model.pt").read_bytes() == (run_dir / "model.pt").read_bytes()
    settings = json.loads((build / "model" / "settings.json").read_text())
    assert settings["inference"]["overlap"] == 0.25 and settings["postprocess"] == POSTPROCESS
    assert settings["network"] == NET and settings["normalize"] == "percentile"
    with tarfile.open(build / "model.tar.gz") as tar:
        assert sorted(tar.getnames()) == ["model.pt", "settings.json"]
        assert tar.extractfile("model.pt").read() == (run_dir / "model.pt").read_bytes()
    # the Dockerfile: pinned CUDA PyTorch base, the library from the archive, non-root, the API
    docker = (build / "Dockerfile").read_text()
    torch_pin = next(line for line in (REPO / "requirements.txt").read_text().splitlines()
                     if line.startswith("torch=="))
    assert f"FROM --platform=linux/amd64 pytorch/pytorch:{torch_pin.split('==')[1]}-cuda" in docker
    assert "pip install --no-cache-dir --no-color --no-deps selma3d-src.tar.gz" in docker
    assert "USER user" in docker and docker.index("USER user") < docker.index("ENTRYPOINT")
    assert f'ENTRYPOINT ["python", "{ed.entry_point}"]' in docker
    assert ('LABEL org.grand-challenge.api-method="invoke"' in docker) == (year == 2026)
    assert ("COPY --chown=user:user model /opt/app/model" in docker) == (year != 2026)  # 2026: weights apart
    assert ("!model" in (build / ".dockerignore").read_text()) == (year != 2026)
    assert f'main(["--edition", "{year}"])' in (build / ed.entry_point).read_text()
    # pinned runtime requirements, the source archive of the library
    reqs = [line for line in (build / "requirements.txt").read_text().splitlines() if not line.startswith("#")]
    assert len(reqs) == len(RUNTIME_PACKAGES) and all("==" in r for r in reqs)
    with tarfile.open(build / "selma3d-src.tar.gz") as tar:
        members = set(tar.getnames())
    assert {"selma3d/pyproject.toml", "selma3d/README.md", "selma3d/src/selma3d/inference/algorithm.py",
            "selma3d/src/selma3d/inference/patches.py"} <= members
    # the manifest: run id, config hash, commit, validation scores, checksums
    m = json.loads((build / "manifest.json").read_text())
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert m["edition"] == year and m["api"] == ed.api
    assert m["run"]["id"] == RUN and m["run"]["seed"] == 0 and m["run"]["budget"] == 2
    assert m["source"]["commit"] == head and isinstance(m["source"]["dirty"], bool)
    assert len(m["model"]["config_hash"]) == 64
    assert m["validation"] == {"best_val_dice": 0.4321, "best_step": 39, "last_val_dice": 0.4321,
                               "val_points": 2, "steps": 40}
    assert m["interface"]["output"] == "/output/" + ed.output_file
    readme = (build / "README.md").read_text()
    assert "docker build --platform=linux/amd64" in readme and "./do_test_run.sh" in readme
    assert "docker save" in readme and "selma3d check-algorithm" in readme
    assert subprocess.run(["bash", "-n", str(build / "do_test_run.sh")]).returncode == 0


def test_editions_interfaces():
    assert A.EDITIONS[2024].input_dir == "images/3d-brain-microscopy"
    assert A.EDITIONS[2024].output_file == "images/brain-structure/output.mha"
    for year in (2025, 2026):
        assert A.EDITIONS[year].input_dir == "images/light-sheet-3d-microscopy"
        assert A.EDITIONS[year].output_file == "images/isolated-biological-structure/output.mha"
    assert A.EDITIONS[2025].inputs_key == "interface" and A.EDITIONS[2026].inputs_key == "socket"
    assert A.EDITIONS[2026].model_dir == "/opt/ml/model" and A.EDITIONS[2026].api == "invoke"


def test_runtime_requirements_cover_what_the_container_imports():
    from test_envs import CONDA_NAME, PIP_NAME, closure

    _, third = closure(REPO / "src" / "selma3d" / "inference" / "algorithm.py")
    pip_names = {PIP_NAME.get(CONDA_NAME.get(m, m), CONDA_NAME.get(m, m)).lower() for m in third}
    assert pip_names - {"torch"} <= set(RUNTIME_PACKAGES), pip_names - set(RUNTIME_PACKAGES)


def test_check_2026_on_real_patches_equals_the_infer_rule(builds, run_dir, images, settings, tmp_path, capsys):
    """The invoke server, started from the build's own app.py and library archive, answers
    /health and one /invoke per case; each mask equals the infer rule's prediction."""
    from selma3d.inference.check import check_algorithm, format_checks
    from selma3d.inference.patches import infer_test_split

    manifest = tmp_path / "manifest.csv"
    pd.DataFrame([{"case": p.name.split(".")[0], "role": "image", "split": "test", "structure": "cfos_neuron",
                   "category": "", "spacing_um": "6,1.625,1.625", "path": str(p)}
                  for p in sorted(images.iterdir())]).to_csv(manifest, index=False)
    predictions = tmp_path / "predictions"
    s = {k: settings[k] for k in ("overlap", "threshold", "sw_batch_size", "blend", "min_component_size", "mirror_axes")}
    infer_test_split(run_dir / "model.pt", manifest, predictions, progress=False, **s)
    checks = check_algorithm(builds[2026], images, predictions=predictions, timeout=300)
    with capsys.disabled():
        print("\n" + format_checks(checks))
    assert [c.case for c in checks if c.kind == "image"] == ["cfos_neuron_753_1", "cfos_neuron_753_2"]
    assert {c.case for c in checks if c.kind == "bad input"} == {
        "no image", "two images", "2D image", "NaN image", "missing inputs.json", "unknown socket slug"}
    assert all(c.ok for c in checks), [c.detail for c in checks if not c.ok]
    assert all(0 < c.foreground < 10**6 for c in checks if c.kind == "image")


@pytest.mark.slow
def test_check_2025_exec_with_the_cli(builds, images, tmp_path, capsys):
    """The exec container (`python inference.py`, run once per case) through the CLI."""
    from selma3d.cli import main

    one = tmp_path / "one"
    one.mkdir()
    (one / "cfos_neuron_753_1.mha").write_bytes((images / "cfos_neuron_753_1.mha").read_bytes())
    rc = main(["check-algorithm", str(builds[2025]), "--images", str(one), "--timeout", "300",
               "--report", str(tmp_path / "check.tsv")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "7/7 checks passed" in out
    report = pd.read_csv(tmp_path / "check.tsv", sep="\t")
    assert report["ok"].all() and len(report) == 7


def test_exec_2024_in_process_keeps_geometry_and_refuses_bad_cases(builds, images, tmp_path):
    ed = A.EDITIONS[2024]
    algorithm = A.load_algorithm(builds[2024] / "model", ed, device=torch.device("cpu"))
    inp, out = tmp_path / "input", tmp_path / "output"
    folder = inp / ed.input_dir
    folder.mkdir(parents=True)
    (folder / "x.mha").write_bytes((images / "cfos_neuron_753_1.mha").read_bytes())
    summary = A.run_case(algorithm, inp, out)  # 2024 reads no inputs.json
    mask_path = out / "images" / "brain-structure" / "output.mha"
    assert Path(summary["output"]) == mask_path
    mask = io.read_mha(mask_path).data
    assert mask.dtype == np.int8 and set(np.unique(mask).tolist()) <= {0, 1} and mask.shape == (100, 100, 100)
    assert io.read_geometry(mask_path).matches(GEOMETRY) == []
    (folder / "y.tif").write_bytes((images / "cfos_neuron_753_2.tif").read_bytes())
    with pytest.raises(InputError, match="found 2: x.mha, y.tif"):
        A.run_case(algorithm, inp, out)
    assert not mask_path.exists()  # the earlier case's mask does not stay behind


def test_invoke_server_health_and_errors_in_process(builds, tmp_path):
    ed = A.EDITIONS[2026]
    algorithm = A.load_algorithm(builds[2026] / "model", ed, device=torch.device("cpu"))
    roots = A.Roots(tmp_path / "input", tmp_path / "output", builds[2026] / "model")
    server = A.make_server(algorithm, roots, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with urllib.request.urlopen(url + "/health", timeout=10) as r:
            assert r.status == 200
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(urllib.request.Request(url + "/invoke", data=b"{}", method="POST"), timeout=10)
        assert err.value.code == 400
        message = json.loads(err.value.read())["error"]
        assert "inputs.json" in message and "\n" not in message
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url + "/nothing", timeout=10)
        assert err.value.code == 404
    finally:
        server.shutdown()
        server.server_close()


def test_export_refuses_a_missing_model_and_a_dirty_checkout(tmp_path, settings):
    with pytest.raises(InputError, match="model.pt"):
        export_algorithm(tmp_path / "nothing", 2026, tmp_path / "out", settings)
    assert not (tmp_path / "out").exists()
    repo = tmp_path / "repo"
    (repo / "src" / "selma3d").mkdir(parents=True)
    (repo / "pyproject.toml").write_text("[project]\nname = 'selma3d'\n")
    (repo / "README.md").write_text("readme\n")
    (repo / "src" / "selma3d" / "__init__.py").write_text("")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "x"], check=True)
    clean = source_archive(tmp_path / "clean.tar.gz", root=repo)
    assert clean["dirty"] is False and len(clean["commit"]) == 40
    (repo / "src" / "selma3d" / "new.py").write_text("x = 1\n")
    with pytest.raises(InputError, match="clean git checkout"):
        source_archive(tmp_path / "dirty.tar.gz", root=repo)
    dirty = source_archive(tmp_path / "dirty.tar.gz", allow_dirty=True, root=repo)
    with tarfile.open(tmp_path / "dirty.tar.gz") as tar:
        assert "selma3d/src/selma3d/new.py" in tar.getnames()
    assert dirty["dirty"] is True and dirty["commit"] == clean["commit"]


def test_best_run_follows_the_edition_ranking():
    from selma3d.evaluation.metrics import METRIC_COLUMNS
    from selma3d.evaluation.submission import best_run

    def row(strategy, seed, structure, category, dice, second, betti0, protocol):
        r = {m: 0.5 for m in METRIC_COLUMNS} | {"dice": dice, "betti0_error": betti0, "betti1_error": 1.0}
        r["pq" if category.startswith("isolated") else "cldice"] = second
        return {"protocol": protocol, "strategy": strategy, "mode": "full", "budget": "all", "seed": seed,
                "case": f"{structure}_1", "structure": structure, "category": category, **r}

    # (strategy, seed): isolated (Dice, PQ), contiguous (Dice, clDice), β0 error. Isolated: A
    # best Dice, B best PQ (a tie of ranks); contiguous: B better on both, so B ranks first.
    # B's seed 1 beats its seed 0 on everything.
    runs = {("A", 0): ((0.9, 0.2), (0.5, 0.2), 9), ("B", 0): ((0.7, 0.8), (0.7, 0.8), 2),
            ("B", 1): ((0.8, 0.9), (0.8, 0.9), 1)}
    rows = []
    for protocol in ("selma3d2026", "selma3d2024"):
        for (strategy, seed), (iso, con, b0) in runs.items():
            rows.append(row(strategy, seed, "cfos_neuron", "isolated_sparse", *iso, b0, protocol))
            rows.append(row(strategy, seed, "blood_vessel", "contiguous_dense", *con, b0, protocol))
    cases = pd.DataFrame(rows)
    best = best_run(cases, 2026)  # final ranks: A (1.5 + 2) / 2, B (1.5 + 1) / 2
    assert best["run_id"] == "B/full/ball_s1" and best["seeds"] == [0, 1] and best["place"] == 1
    assert best["final_rank"] == 1.25 and best["runs_ranked"] == 2
    assert best_run(cases, 2025)["protocol"] == "selma3d2026"
    best24 = best_run(cases, 2024)  # spot: Dice A, β0 B (1.5 each); tree: B first on all but a β1 tie
    assert best24["protocol"] == "selma3d2024" and best24["run_id"] == "B/full/ball_s1"
    with pytest.raises(InputError, match="selma3d2024"):
        best_run(cases[cases.protocol == "selma3d2026"], 2024)
    # the classical baseline, however good, is never the run put in a container
    classical = cases[(cases.strategy == "B") & (cases.seed == 1)].assign(strategy="threshold", seed=0)
    assert best_run(pd.concat([cases[cases.strategy == "A"], classical]), 2026)["strategy"] == "A"
    with pytest.raises(InputError, match="network run"):
        best_run(classical, 2026)


def test_submission_is_a_target_of_its_own(tmp_path):
    from test_workflow import snakemake

    res = snakemake("submission", "-n", "--nolock", "--config", f"results_dir={tmp_path / 'r'}")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "export_algorithm" in res.stdout and "check_algorithm" in res.stdout
    assert f"{tmp_path / 'r'}/submission/selma3d2026-algorithm" in res.stdout
    res = snakemake("all", "-n", "--nolock", "--config", f"results_dir={tmp_path / 'r'}")
    assert res.returncode == 0 and "export_algorithm" not in res.stdout


def test_export_cli_uses_the_config_and_records_leaderboard_scores(tmp_path, capsys):
    from selma3d.cli import main
    from selma3d.evaluation.leaderboard import write_leaderboard
    from selma3d.evaluation.metrics import METRIC_COLUMNS

    rows = []
    for strategy, budget, dice in [("mae", 2, 0.8), ("scratch", 2, 0.6)]:
        for structure, category in [("cfos_neuron", "isolated_sparse"), ("blood_vessel", "contiguous_dense")]:
            rows.append({"strategy": strategy, "mode": "full", "budget": budget, "seed": 0, "case": f"{structure}_1",
                         "structure": structure, "category": category, **{m: 0.5 for m in METRIC_COLUMNS},
                         "dice": dice})
    write_leaderboard({"selma3d2026": pd.DataFrame(rows)}, tmp_path / "leaderboard")
    run = make_run(tmp_path / "results")
    rc = main(["export-algorithm", "--run", str(run), "--edition", "2025", "--out", str(tmp_path / "build"),
               "--config", str(REPO / "config" / "config.yaml"), "--leaderboard",
               str(tmp_path / "leaderboard" / "leaderboard.csv"), "--allow-dirty"])
    assert rc == 0 and "SELMA3D 2025 algorithm (exec API) of run mae/full/b2_s0" in capsys.readouterr().out
    m = json.loads((tmp_path / "build" / "manifest.json").read_text())
    assert m["inference"]["mirror_axes"] == [] and m["inference"]["overlap"] == 0.25  # config, then schema
    assert m["inference"]["min_component_size"] == 0
    board = m["leaderboard"]["selma3d2026"]
    assert board["final_rank"] == 1.25  # Dice rank 1, PQ/clDice tied (1.5), per category
    assert board["groups"]["isolated_sparse"]["dice"]["mean"] == 0.8
    rc = main(["export-algorithm", "--run", str(tmp_path / "nowhere"), "--out", str(tmp_path / "b2")])
    assert rc == 2 and "model.pt" in capsys.readouterr().err
