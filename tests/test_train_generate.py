"""Trainer (config errors, checkpoints, resume) and `geo3d generate` on a tiny EQGAT-diff."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest
import torch
from rdkit import Chem
from rdkit.Chem import AllChem
from typer.testing import CliRunner

import geo3d
from geo3d.checkpoint import load_checkpoint
from geo3d.cli import app
from geo3d.data.molecules import ATOM_INDEX
from geo3d.diffusion.schedules import cosine_alpha_bar
from geo3d.diffusion.valence import max_valence
from geo3d.registry import build_model
from geo3d.train import ConfigError, load_config, make_task
from geo3d.train.trainer import train

runner = CliRunner()
SMILES = ["CCO", "CC(=O)O", "C#N", "CN", "OCCO", "CC=O", "C1CC1", "NC=O", "CCN", "COC", "C=CC", "OC=O"]


def _plain(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"\x1b\[[0-9;]*m", "", text))


@pytest.fixture
def sdf_set(tmp_path):
    path = tmp_path / "mols.sdf"
    writer = Chem.SDWriter(str(path))
    for k, s in enumerate(SMILES):
        m = Chem.AddHs(Chem.MolFromSmiles(s))
        AllChem.EmbedMolecule(m, randomSeed=k)
        writer.write(m)
    writer.close()
    return path


def _config(tmp_path, sdf_set, **train):
    text = f"""
task: eqgat_diff
model:
  denoiser: {{num_layers: 2, s_dim: 16, v_dim: 4, e_dim: 4}}
  timesteps: 20
data: {{dataset: sdf, path: {sdf_set}}}
optim: {{lr: 1.0e-3}}
train:
  epochs: 2
  batch_size: 4
  out_dir: {tmp_path / "run"}
  checkpoint_every_steps: 2
  eval_samples: 4
  eval_steps: 5
"""
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_config_typos_name_the_field(tmp_path, sdf_set):
    path = _config(tmp_path, sdf_set)
    text = path.read_text().replace("batch_size", "batch_sise")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=r"bad\.yaml: field 'train\.batch_sise'"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"field 'train\.epochs'"):
        load_config(path, ["train.epochs=zero"])
    bad.write_text("task: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    result = runner.invoke(app, ["train", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 1 and "missing.yaml" in _plain(result.output)


def test_train_resume_load_and_generate(tmp_path, sdf_set, capfd):
    cfg = load_config(_config(tmp_path, sdf_set), ["train.max_steps=3"])
    train(make_task(cfg), cfg)
    last = tmp_path / "run" / "last.pt"
    state = load_checkpoint(last)
    assert state["extra"]["train_state"]["step"] == 3
    # Resume: continues from step 3 to the end of 2 epochs (11 training molecules / 4 = 3 per epoch).
    cfg = load_config(_config(tmp_path, sdf_set))
    best = train(make_task(cfg), cfg)
    state = load_checkpoint(last)
    assert state["extra"]["train_state"]["step"] == 6 and state["extra"]["train_state"]["epoch"] == 2
    assert "mol_stability" in state["metrics"]
    assert best.name == "best.pt"

    model = geo3d.load_model(best)
    assert not model.training
    out = tmp_path / "gen.sdf"
    result = runner.invoke(
        app,
        [
            "generate",
            "--model",
            str(best),
            "-n",
            "5",
            "-o",
            str(out),
            "--steps",
            "4",
            "--sampler",
            "fast",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["n_molecules"] == 5
    supplier = Chem.SDMolSupplier(str(out), sanitize=False, removeHs=False)
    mols = list(supplier)
    assert len(mols) == 5 and all(m is not None for m in mols)  # invalid ones are written and flagged
    assert all(m.HasProp("geo3d_valid") for m in mols)
    assert all(m.GetNumConformers() == 1 for m in mols)
    # RDKit's complaints about the invalid ones are counted (at least one each), not printed.
    invalid = sum(not m.GetIntProp("geo3d_valid") for m in mols)
    assert metrics["rdkit_log_lines"] >= invalid
    err = capfd.readouterr().err
    assert "valence" not in err and "kekulize" not in err, err

    # --valence-aware: the written molecules stay within RDKit's valence limits; the raw model's
    # molecules of the same trajectories are scored beside them.
    aware = tmp_path / "aware.sdf"
    args = [
        "generate",
        "--model",
        str(best),
        "-n",
        "5",
        "-o",
        str(aware),
        "--steps",
        "4",
        "--sampler",
        "fast",
    ]
    result = runner.invoke(app, [*args, "--valence-aware", "--json"])
    assert result.exit_code == 0, result.output
    both = json.loads(result.stdout.strip().splitlines()[-1])
    scores = [k for k in both["raw"] if not k.endswith("_log_lines")]
    assert {k: both["raw"][k] for k in scores} == {k: metrics[k] for k in scores}  # same seed, same raw
    assert both["validity"] >= both["raw"]["validity"]
    for mol in Chem.SDMolSupplier(str(aware), sanitize=False, removeHs=False):
        for atom in mol.GetAtoms():
            order = sum(b.GetBondTypeAsDouble() for b in atom.GetBonds())
            assert order <= max_valence(ATOM_INDEX[atom.GetSymbol()], atom.GetFormalCharge())
    table = runner.invoke(app, [*args, "--valence-aware"])
    assert (
        table.exit_code == 0 and "valence-aware" in _plain(table.stdout) and " raw " in _plain(table.stdout)
    )


def test_bfloat16_autocast_training_keeps_float32_weights(tmp_path, sdf_set):
    cfg = load_config(_config(tmp_path, sdf_set), ["train.max_steps=2", "train.precision=bfloat16"])
    train(make_task(cfg), cfg)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["extra"]["train_state"]["step"] == 2
    weights = [v for v in state["state_dict"].values() if v.is_floating_point()]
    assert weights and all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights)
    with pytest.raises(ConfigError, match="precision"):
        load_config(_config(tmp_path, sdf_set), ["train.precision=fp16"])


def test_bfloat16_loss_and_gradients_follow_float32(sdf_set):
    """Autocast changes the matrix products' rounding, not the model: on the same batch and noise
    the bf16 loss is within 3% of float32 and the gradient points the same way (cosine > 0.95)."""
    from torch_geometric.loader import DataLoader

    from geo3d.data.marginals import molecule_marginals
    from geo3d.data.sdf import read_sdf
    from geo3d.diffusion.eqgat_diff import EQGATDiffusion
    from geo3d.train.precision import autocast_context

    data = read_sdf(sdf_set)
    stats = molecule_marginals(data)
    torch.manual_seed(0)
    model = EQGATDiffusion(
        {
            "denoiser": {"num_layers": 2, "s_dim": 32, "v_dim": 8, "e_dim": 8},
            "priors": {
                "atoms": stats.atom_type_count.tolist(),
                "charges": stats.charge_count.tolist(),
                "bonds": stats.bond_type_count.tolist(),
                "num_atoms": stats.num_atoms_count.tolist(),
            },
        }
    )
    batch = next(iter(DataLoader(data, batch_size=len(data))))
    losses, grads = [], []
    for precision in ("float32", "bfloat16"):
        model.zero_grad()
        with autocast_context(precision):
            loss, _ = model.loss(batch, torch.Generator().manual_seed(3))
        loss.backward()
        losses.append(float(loss))
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None]))
    assert abs(losses[1] - losses[0]) < 0.03 * abs(losses[0]), losses
    assert torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > 0.95


@pytest.mark.slow
def test_compiled_training_keeps_the_checkpoint_layout(tmp_path, sdf_set):
    """train.compile: the checkpoint has the eager model's keys (so it loads without compile),
    and the compiled model computes the eager model's loss."""
    cfg = load_config(_config(tmp_path, sdf_set), ["train.max_steps=2", "train.compile=true"])
    train(make_task(cfg), cfg)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    model = geo3d.load_model(tmp_path / "run" / "last.pt")
    assert list(state["state_dict"]) == list(model.state_dict())

    from torch_geometric.loader import DataLoader

    from geo3d.data.sdf import read_sdf

    batch = next(iter(DataLoader(read_sdf(sdf_set), batch_size=6)))
    eager, _ = model.loss(batch, torch.Generator().manual_seed(1))
    model.compile_for_training()
    compiled, _ = model.loss(batch, torch.Generator().manual_seed(1))
    assert torch.allclose(compiled, eager, rtol=1e-4), (float(compiled), float(eager))


def test_generate_refuses_unknown_models(tmp_path):
    result = runner.invoke(app, ["generate", "--model", str(tmp_path / "nope.pt")])
    assert result.exit_code == 1 and "nope.pt" in _plain(result.output)
    foreign = tmp_path / "foreign.pt"
    torch.save({"a": torch.zeros(1)}, foreign)
    result = runner.invoke(app, ["generate", "--model", str(foreign)])
    assert result.exit_code == 1 and "not a geo3d checkpoint" in _plain(result.output)


@pytest.mark.slow
def test_torchrun_data_parallel_on_cpu(tmp_path, sdf_set):
    """Two gloo ranks train the same tiny model; rank 0 writes one checkpoint."""
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun") or str(
        __import__("pathlib").Path(sys.executable).with_name("torchrun")
    )
    cfg = _config(tmp_path, sdf_set)
    proc = subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "geo3d.cli",
            "train",
            str(cfg),
            "-s",
            "train.epochs=1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    # 11 training molecules, batch 4 per rank, 2 ranks: ceil(11 / 8) = 2 steps per epoch.
    assert state["extra"]["train_state"]["step"] == 2


def test_warm_start_from_a_checkpoint(tmp_path, sdf_set, capsys):
    cfg = load_config(_config(tmp_path, sdf_set), ["train.max_steps=2"])
    first = train(make_task(cfg), cfg)
    init = load_checkpoint(first)
    # A fresh out_dir with init_from: the run starts from those (EMA) weights and their config.
    cfg = load_config(
        _config(tmp_path, sdf_set),
        ["train.max_steps=1", f"train.out_dir={tmp_path / 'warm'}", f"train.init_from={first}"],
    )
    cfg.model["denoiser"]["s_dim"] = 999  # ignored: the architecture comes from the checkpoint
    cfg.model["timestep_beta"] = 2.0  # used: the training objective comes from this config
    nu = {"pos": 2.5, "atoms": 1.0, "charges": 1.0, "bonds": 1.0}  # so is the schedule (bonds 1.5 -> 1)
    cfg.model["nu"] = nu
    train(make_task(cfg), cfg)
    printed = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "model keys ['denoiser'] differ from it and are not used" in printed
    assert "training with this config's ['nu', 'timestep_beta']" in printed
    warm = load_checkpoint(tmp_path / "warm" / "last.pt")
    assert "timestep_beta" not in init["config"]  # configs are stored as written
    assert warm["config"] == {**init["config"], "timestep_beta": 2.0, "nu": nu}
    # the fine-tuned model samples on the schedule it was trained on
    model = build_model(warm["arch"], warm["config"])
    assert torch.allclose(model.abar_bonds, cosine_alpha_bar(model.timesteps, 1.0))
    assert warm["extra"]["train_state"]["step"] == 1
    moved = max(
        (warm["extra"]["train_state"]["model"][k] - v).abs().max().item()
        for k, v in init["state_dict"].items()
        if v.dtype.is_floating_point
    )
    assert 0 < moved < 0.1  # one small step away from the initial weights, not a fresh init


def test_cosine_schedule():
    from geo3d.train.lr_schedule import learning_rate

    cfg = load_config_from_text(
        "task: eqgat_diff\noptim: {lr: 1.0, warmup_steps: 10, schedule: cosine, min_lr_ratio: 0.1}"
    )
    lrs = [learning_rate(cfg, s, 110) for s in range(111)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.55) and lrs[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))


def load_config_from_text(text: str):
    import yaml

    from geo3d.train.config import ExperimentConfig

    return ExperimentConfig.model_validate(yaml.safe_load(text))


def test_train_a_potential_and_use_it_in_ase(tmp_path):
    from ase.build import bulk

    from geo3d.calculators import Geo3DCalculator

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(
        root / "configs" / "potential_cu_emt.yaml",
        [
            "train.epochs=2",
            f"train.out_dir={tmp_path / 'pot'}",
            "data.limit_train=8",
            "data.limit_val=4",
            "train.eval_every_epochs=1",
            f"data.path={root / 'datasets/cu_emt/train.xyz'}",
            f"data.val_path={root / 'datasets/cu_emt/test.xyz'}",
        ],
    )
    best = train(make_task(cfg), cfg)
    ckpt = load_checkpoint(best)
    assert ckpt["arch"] == "potential" and ckpt["metrics"]["forces_mae_meV_A"] > 0
    assert len(ckpt["config"]["e0"]) == len(ckpt["config"]["elements"]) == 2  # Cu and Au, fitted
    # The training domain is refitted at validation and kept; validation reports the signal.
    assert len(ckpt["config"]["domain"]["feature_representatives"]) == 2
    assert ckpt["metrics"]["extrapolation_max"] > 0
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    atoms.calc = Geo3DCalculator(model=str(best))
    assert abs(atoms.get_potential_energy()) < 10 * len(atoms)
    assert atoms.get_stress().shape == (6,)


@pytest.mark.slow
def test_torchrun_data_parallel_potential(tmp_path):
    """Force training (double backward) under DDP: two gloo ranks, one checkpoint."""
    import os
    import shutil
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    proc = subprocess.run(
        [
            torchrun,
            *("--standalone", "--nproc-per-node", "2", "-m", "geo3d.cli", "train"),
            *(str(root / "configs/potential_cu_emt.yaml"), "--no-resume"),
            *("-s", "train.epochs=1", "-s", "data.limit_train=16", "-s", "data.limit_val=4"),
            *("-s", f"data.path={root / 'datasets/cu_emt/train.xyz'}"),
            *("-s", f"data.val_path={root / 'datasets/cu_emt/test.xyz'}"),
            *("-s", f"train.out_dir={tmp_path / 'pot'}"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    state = load_checkpoint(tmp_path / "pot" / "last.pt")
    assert state["extra"]["train_state"]["step"] == 2  # 16 frames, batch 4 per rank, 2 ranks


def test_extra_ema_shadows_are_kept_resumed_and_exported(tmp_path, sdf_set):
    # no validation (not what is tested here); 0.2 < the warm-up ramp (1 + step) / (10 + step) from step 2
    extra = [
        "train.ema_extra_decays=[0.999, 0.0, 0.2]",
        "train.eval_on_stop=false",
        "train.eval_every_epochs=9",
    ]
    cfg = load_config(_config(tmp_path, sdf_set), ["train.max_steps=4", *extra])
    train(make_task(cfg), cfg)
    whole = load_checkpoint(tmp_path / "run" / "last.pt")["extra"]["train_state"]
    ts = whole
    assert [e["decay"] for e in ts["ema_extra"]] == [0.999, 0.0, 0.2]
    same, last, mid = (e["shadow"] for e in ts["ema_extra"])
    for k, v in ts["model"].items():  # oracles: the main decay's twin is the main shadow, decay 0 the weights
        assert torch.equal(same[k], ts["ema"]["shadow"][k]) and torch.equal(last[k], v)
    assert any(not torch.equal(mid[k], same[k]) for k in mid if mid[k].dtype.is_floating_point)

    # stopped after 2 steps and resumed: the shadows continue as in the run without a stop
    cut = tmp_path / "cut"
    cfg = load_config(_config(tmp_path, sdf_set), ["train.max_steps=2", *extra, f"train.out_dir={cut}"])
    train(make_task(cfg), cfg)
    cfg = load_config(_config(tmp_path, sdf_set), ["train.max_steps=4", *extra, f"train.out_dir={cut}"])
    train(make_task(cfg), cfg)
    resumed = load_checkpoint(cut / "last.pt")["extra"]["train_state"]
    for k, v in whole["ema_extra"][2]["shadow"].items():
        torch.testing.assert_close(resumed["ema_extra"][2]["shadow"][k], v, rtol=1e-6, atol=1e-7)

    out = tmp_path / "last_weights.pt"
    result = runner.invoke(app, ["export", str(tmp_path / "run" / "last.pt"), str(out), "--ema-decay", "0.0"])
    assert result.exit_code == 0, result.output
    exported = load_checkpoint(out)
    assert all(torch.equal(exported["state_dict"][k], v) for k, v in ts["model"].items())
    assert exported["metrics"]["ema_decay"] == 0.0
    result = runner.invoke(app, ["export", str(tmp_path / "run" / "last.pt"), str(out), "--ema-decay", "0.5"])
    assert result.exit_code == 1
    assert "no EMA shadow of decay 0.5; it holds [0.0, 0.2, 0.999]" in _plain(result.output)


def test_warm_start_switches_on_self_conditioning(tmp_path, sdf_set, capsys):
    """A plain checkpoint seeds a self-conditioned run (its new inputs start at zero); a checkpoint that
    lacks any other weight is still refused, naming it."""
    from geo3d.checkpoint import CheckpointError
    from geo3d.train.trainer import _warm_start

    cfg = load_config(_config(tmp_path, sdf_set), ["train.max_steps=2"])
    first = train(make_task(cfg), cfg)
    cfg = load_config(
        _config(tmp_path, sdf_set),
        [
            "train.max_steps=1",
            f"train.out_dir={tmp_path / 'sc'}",
            f"train.init_from={first}",
            "model.self_condition=true",
        ],
    )
    train(make_task(cfg), cfg)
    assert "training with this config's ['self_condition']" in " ".join(capsys.readouterr().out.split())
    warm = load_checkpoint(tmp_path / "sc" / "last.pt")
    assert warm["config"]["self_condition"] is True
    assert "denoiser.cond_atom.weight" in warm["state_dict"]
    model = geo3d.load_model(tmp_path / "sc" / "last.pt")
    assert model.denoiser.self_condition and len(model.sample(2, steps=3)) == 2
    init = load_checkpoint(first)
    broken = {k: v for k, v in init["state_dict"].items() if k != "denoiser.head_coord.weight"}
    with pytest.raises(CheckpointError, match=r"missing \['denoiser.head_coord.weight'\]"):
        _warm_start(model, "eqgat_diff", {**init, "state_dict": broken}, "x.pt")
