"""Molecule metrics on hand-built molecules with known answers, and `geo3d evaluate-molecules`."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from rdkit import Chem
from rdkit.Chem import AllChem
from typer.testing import CliRunner

import geo3d.metrics.molecules as mm
from geo3d.cli import app
from geo3d.data.molecules import ATOM_INDEX, build_mol
from geo3d.metrics import (
    LEGACY_VALENCES,
    MoleculeStatistics,
    distribution_distances,
    evaluate_molecules,
    format_metrics_table,
    read_generated_sdf,
    stability,
    stable_atoms,
    valid_smiles,
)

runner = CliRunner()
_CLASS = {
    Chem.BondType.SINGLE: 1,
    Chem.BondType.DOUBLE: 2,
    Chem.BondType.TRIPLE: 3,
    Chem.BondType.AROMATIC: 4,
}


def _plain(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"\x1b\[[0-9;]*m", "", text))


def hand(atoms: list[tuple[str, int]], bonds: list[tuple[int, int, int]], pos=None) -> Chem.Mol:
    """A molecule as a generator would emit it: elements+charges, bond classes, coordinates."""
    n = len(atoms)
    matrix = torch.zeros(n, n, dtype=torch.long)
    for i, j, k in bonds:
        matrix[i, j] = matrix[j, i] = k
    if pos is None:
        pos = torch.arange(3 * n, dtype=torch.float32).reshape(n, 3)  # any distinct points
    return build_mol(
        torch.tensor([ATOM_INDEX[s] for s, _ in atoms]),
        torch.tensor([q for _, q in atoms]),
        matrix,
        torch.as_tensor(pos, dtype=torch.float32),
    )


def from_smiles(smiles: str, kekulize: bool = False, seed: int = 0) -> Chem.Mol:
    """Explicit-H 3D molecule from SMILES, rebuilt through ``build_mol`` (aromatic bonds kept unless kekulized)."""
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    assert AllChem.EmbedMolecule(mol, randomSeed=seed) == 0
    if kekulize:
        Chem.Kekulize(mol, clearAromaticFlags=True)
    atoms = [(a.GetSymbol(), a.GetFormalCharge()) for a in mol.GetAtoms()]
    bonds = [(b.GetBeginAtomIdx(), b.GetEndAtomIdx(), _CLASS[b.GetBondType()]) for b in mol.GetBonds()]
    return hand(atoms, bonds, mol.GetConformer().GetPositions())


def _h_star(centre: tuple[str, int], n_h: int) -> Chem.Mol:
    """A centre atom with ``n_h`` hydrogens (whatever its valence)."""
    return hand([centre] + [("H", 0)] * n_h, [(0, k, 1) for k in range(1, n_h + 1)])


# name -> (molecule, stable under the legacy table, stable under the corrected one, RDKit-valid)
CASES = {
    "methane": (lambda: from_smiles("C"), True, True, True),
    "ethanol": (lambda: from_smiles("CCO"), True, True, True),
    "benzene_kekule": (lambda: from_smiles("c1ccccc1", kekulize=True), True, True, True),
    "benzene_aromatic": (lambda: from_smiles("c1ccccc1"), True, True, True),
    "naphthalene_aromatic": (lambda: from_smiles("c1ccc2ccccc2c1"), True, True, True),
    "pyrrole_aromatic": (lambda: from_smiles("c1cc[nH]c1"), True, True, True),
    "ammonium": (lambda: from_smiles("[NH4+]"), True, True, True),
    # legacy: aromatic O+ counts 1 + 1 = 2, but its table wants O+ = 3
    "pyrylium_aromatic": (lambda: from_smiles("c1cc[o+]cc1"), False, True, True),
    # legacy table has no S(IV)
    "dmso": (lambda: from_smiles("CS(C)=O"), False, True, True),
    # legacy accepts neutral C with valence 3 and N+ with 3: a lost hydrogen passes
    "methyl_radical": (lambda: _h_star(("C", 0), 3), True, False, True),
    "ammonium_missing_h": (lambda: _h_star(("N", 1), 3), True, False, True),
    "pentavalent_carbon": (lambda: _h_star(("C", 0), 5), False, False, False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_stability_and_validity_of_known_molecules(name):
    build, legacy, corrected, valid = CASES[name]
    mol = build()
    assert all(stable_atoms(mol, "legacy")) is legacy
    assert all(stable_atoms(mol, "corrected")) is corrected
    assert (valid_smiles(mol) is not None) is valid
    metrics = evaluate_molecules([mol], posebusters=False, xtb=False)
    assert metrics["mol_stability_legacy"] == float(legacy)
    assert metrics["mol_stability"] == float(corrected)
    assert metrics["validity"] == float(valid)


def test_atom_stability_counts_atoms_over_all_molecules():
    mols = [_h_star(("C", 0), 5), from_smiles("C")]  # 1 bad atom of 6, then 5 good atoms
    out = stability(mols, "corrected")
    assert out["atom_stability"] == pytest.approx(10 / 11)
    assert out["mol_stability"] == 0.5
    assert stable_atoms(mols[0], "corrected") == [False] + [True] * 5


def test_legacy_table_is_the_published_one():
    # spot checks against MiDi's / EQGAT-diff's allowed_bonds
    assert LEGACY_VALENCES["C"] == {0: (3, 4), 1: (3,), -1: (3,)}
    assert LEGACY_VALENCES["N"] == {0: (2, 3), 1: (2, 3, 4), -1: (2,)}
    assert LEGACY_VALENCES["S"] == {0: (2, 6), 1: (2, 3), 2: (4,), 3: (5,), -1: (3,)}
    assert LEGACY_VALENCES["Cl"] == (1,) and LEGACY_VALENCES["Hg"] == (1, 2)
    # an unlisted charge falls back to the neutral entry, as in their code: C+2 with 4 bonds passes
    assert all(stable_atoms(_h_star(("C", 2), 4), "legacy"))
    assert not all(stable_atoms(_h_star(("C", 2), 4), "corrected"))


def test_aromatic_pyrrole_without_nh_is_locally_stable_but_invalid():
    # every atom has a locally possible valence, but the ring cannot be kekulized
    ring = [(k, (k + 1) % 5, 4) for k in range(5)]
    hs = [(k, 5 + k - 1, 1) for k in range(1, 5)]
    mol = hand([("N", 0)] + [("C", 0)] * 4 + [("H", 0)] * 4, ring + hs)
    assert all(stable_atoms(mol, "corrected")) and all(stable_atoms(mol, "legacy"))
    assert valid_smiles(mol) is None


def test_two_fragments_are_valid_but_not_connected():
    methane, water = from_smiles("C"), from_smiles("O")
    both = Chem.CombineMols(methane, water)
    m = evaluate_molecules([both, methane], posebusters=False, xtb=False)
    assert m["validity"] == 1.0
    assert m["connected_validity"] == 0.5 and m["single_fragment"] == 0.5
    assert valid_smiles(both) == "C.O"


def test_true_uniqueness_and_novelty():
    mols = [
        from_smiles("CCO", seed=1),
        from_smiles("OCC", seed=2),  # same compound, other atom order and conformer
        from_smiles("c1ccccc1"),
        from_smiles("c1ccccc1", kekulize=True),  # same compound, Kekulé bonds
        from_smiles("C"),
        _h_star(("C", 0), 5),  # invalid: not in the denominator
        None,  # unreadable record: counted, invalid
    ]
    m = evaluate_molecules(
        mols, train_smiles=["OCC", "C1=CC=CC=C1", "not a smiles"], posebusters=False, xtb=False
    )
    assert m["n_molecules"] == 7 and m["n_unreadable"] == 1
    assert m["n_valid"] == 5 and m["validity"] == pytest.approx(5 / 7)
    # 3 distinct among 5 valid, counted before any de-duplication (EQGAT-diff would say 1.0)
    assert m["n_unique"] == 3 and m["uniqueness"] == pytest.approx(3 / 5)
    # ethanol and benzene are in the training set (written differently), methane is not
    assert m["n_novel"] == 1 and m["novelty"] == pytest.approx(1 / 3)
    assert 0 < m["qed"] < 1 and 1 <= m["sa_score"] <= 10
    assert m["sa_normalized"] == pytest.approx((10 - m["sa_score"]) / 9)


def test_undefined_metrics_are_absent_with_a_note(monkeypatch):
    monkeypatch.setattr(mm, "optional_packages", lambda: {"posebusters": "not here", "xtb": "not here"})
    notes: list[str] = []
    m = evaluate_molecules([_h_star(("C", 0), 5)], notes=notes)
    assert m["validity"] == 0.0
    for key in ["uniqueness", "novelty", "qed", "atom_type_tv", "pb_valid", "xtb_energy_drop_mean"]:
        assert key not in m
    text = " ".join(notes)
    assert "no valid molecule" in text and "training" in text and "reference" in text
    assert "PoseBusters" in text and "xTB" in text
    with pytest.raises(ImportError, match="not here"):
        evaluate_molecules([from_smiles("C")], posebusters=True)
    empty = {"n_molecules": 0, "n_unreadable": 0, "n_atoms": 0}
    assert evaluate_molecules([]) == {**empty, "rdkit_log_lines": 0, "posebusters_log_lines": 0}


def test_type_distances():
    methane, ethane = from_smiles("C"), from_smiles("CC")
    same = distribution_distances(
        MoleculeStatistics.from_molecules([methane, ethane]),
        MoleculeStatistics.from_molecules([ethane, methane]),
    )
    assert same["atom_type_tv"] == 0 and same["bond_type_tv"] == 0
    assert same["bond_length_w1"] == 0 and same["bond_angle_w1"] == 0
    d = distribution_distances(
        MoleculeStatistics.from_molecules([methane]), MoleculeStatistics.from_molecules([ethane])
    )
    # atoms C/H: 1/5, 4/5 vs 2/8, 6/8; pairs none/single: 6/10, 4/10 vs 21/28, 7/28 (sum |p - q|, as MiDi)
    assert d["atom_type_tv"] == pytest.approx(0.1)
    assert d["bond_type_tv"] == pytest.approx(0.3)


def _water(r1: float, r2: float, angle_deg: float) -> Chem.Mol:
    a = math.radians(angle_deg)
    pos = [[0, 0, 0], [r1, 0, 0], [r2 * math.cos(a), r2 * math.sin(a), 0]]
    return hand([("O", 0), ("H", 0), ("H", 0)], [(0, 1, 1), (0, 2, 1)], pos)


def _formaldehyde(c_o: float) -> Chem.Mol:
    pos = [[0, 0, 0], [c_o, 0, 0], [-0.55, 0.95, 0], [-0.55, -0.95, 0]]
    return hand([("C", 0), ("O", 0), ("H", 0), ("H", 0)], [(0, 1, 2), (0, 2, 1), (0, 3, 1)], pos)


def test_wasserstein_on_hand_made_geometry():
    gen = MoleculeStatistics.from_molecules([_water(1.0, 1.0, 90.0)])
    ref = MoleculeStatistics.from_molecules([_water(1.0, 1.4, 120.0)])
    assert gen.bond_lengths["single"] == pytest.approx([1.0, 1.0])
    assert gen.bond_angles["O"] == pytest.approx([90.0])
    d = distribution_distances(gen, ref)
    # lengths {1.0, 1.0} vs {1.0, 1.4}: half the mass moves 0.4 Å
    assert d["bond_length_w1_single"] == pytest.approx(0.2)
    assert d["bond_angle_w1_O"] == pytest.approx(30.0)
    assert d["bond_length_w1"] == pytest.approx(0.2) and d["bond_angle_w1"] == pytest.approx(30.0)
    # aggregate weighted by the reference's bond counts: 2 C-H (W1 0) and 1 C=O (W1 0.1)
    d = distribution_distances(
        MoleculeStatistics.from_molecules([_formaldehyde(1.2)]),
        MoleculeStatistics.from_molecules([_formaldehyde(1.3)]),
    )
    assert d["bond_length_w1_double"] == pytest.approx(0.1)
    assert d["bond_length_w1_single"] == pytest.approx(0.0, abs=1e-6)
    assert d["bond_length_w1"] == pytest.approx(0.1 / 3)
    assert "bond_length_w1_triple" not in d  # in neither set: no value, not in the mean


def test_reference_may_be_molecules_or_statistics_and_output_is_json():
    mols = [from_smiles("CCO"), from_smiles("c1ccccc1")]
    a = evaluate_molecules(mols, reference=mols, posebusters=False, xtb=False)
    b = evaluate_molecules(
        mols, reference=MoleculeStatistics.from_molecules(mols), posebusters=False, xtb=False
    )
    assert a == b and a["atom_type_tv"] == 0.0
    assert all(isinstance(v, int | float) and not isinstance(v, bool) for v in a.values())
    assert all(np.isfinite(v) for v in a.values())
    assert json.loads(json.dumps(a)) == a
    table = format_metrics_table(a)
    assert table.row_count == len(a)


def _write_sdf(path, smiles: list[str], break_record: int | None = None) -> None:
    blocks = []
    for k, s in enumerate(smiles):
        block = Chem.MolToMolBlock(from_smiles(s, seed=k)) + "$$$$\n"
        if k == break_record:
            lines = block.splitlines()
            lines[4] = lines[4][:20]  # first atom line cut short
            block = "\n".join(lines) + "\n"
        blocks.append(block)
    path.write_text("".join(blocks))


def test_read_sdf_reports_broken_records(tmp_path):
    path = tmp_path / "gen.sdf"
    _write_sdf(path, ["C", "CCO", "O"], break_record=1)
    mols, errors = read_generated_sdf(path)
    assert len(mols) == 3 and mols[1] is None and mols[0].GetNumAtoms() == 5
    assert len(errors) == 1
    err = errors[0]
    # methane's record: 3 header lines, counts, 5 atoms, 4 bonds, M  END, $$$$ = 15 lines
    assert (err.record, err.line) == (2, 16)
    assert "gen.sdf" in str(err) and "record 2" in str(err)
    assert "line 20" in err.message  # RDKit's "line 5" of the record, as a line of the file


def test_cli_json_and_table(tmp_path):
    gen, ref, train = tmp_path / "gen.sdf", tmp_path / "ref.sdf", tmp_path / "train.txt"
    _write_sdf(gen, ["CCO", "CCO", "C", "c1ccccc1"], break_record=2)
    _write_sdf(ref, ["CCO", "CC", "c1ccccc1"])
    train.write_text("CCO ethanol\n\nC1=CC=CC=C1\n")
    args = ["evaluate-molecules", str(gen), "--train-smiles", str(train), "--reference", str(ref)]
    args += ["--no-posebusters", "--no-xtb"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)  # exactly one JSON object on stdout
    m = out["metrics"]
    assert m["n_molecules"] == 4 and m["n_unreadable"] == 1 and m["n_valid"] == 3
    assert m["validity"] == 0.75 and m["uniqueness"] == pytest.approx(2 / 3) and m["novelty"] == 0.0
    assert "bond_length_w1" in m and "atom_type_tv" in m
    assert out["unreadable_records"][0]["record"] == 3
    err = _plain(result.stderr)
    assert "gen.sdf" in err and "record 3" in err and "counted as invalid" in err

    table = runner.invoke(app, args)
    assert table.exit_code == 0, table.output
    text = _plain(table.stdout)
    assert "connected_validity" in text and "75.00 %" in text and "mol_stability_legacy" in text


def test_cli_bad_input(tmp_path):
    missing = runner.invoke(app, ["evaluate-molecules", str(tmp_path / "nope.sdf")])
    assert missing.exit_code == 1 and "nope.sdf" in _plain(missing.output)
    empty = tmp_path / "empty.sdf"
    empty.write_text("\n")
    result = runner.invoke(app, ["evaluate-molecules", str(empty)])
    assert result.exit_code == 1 and "no molecule records" in _plain(result.output)


def test_posebusters_when_installed():
    pytest.importorskip("posebusters")
    m = evaluate_molecules([from_smiles("CCO"), None], posebusters=True, xtb=False)
    assert m["pb_sanitization"] == 0.5  # the unreadable record fails every check
    assert 0.0 <= m["pb_valid"] <= 0.5


def test_xtb_relaxation_when_installed():
    pytest.importorskip("tblite")
    stretched = _water(1.2, 1.2, 104.5)
    m = evaluate_molecules([stretched, None], posebusters=False, xtb=True, xtb_steps=30)
    assert m["xtb_n_relaxed"] == 1 and m["xtb_n_failed"] == 0
    assert m["xtb_energy_drop_mean"] > 1.0  # stretched O-H bonds relax downhill (kcal/mol)


def test_library_logs_are_counted_not_printed(capfd):
    from geo3d.metrics.library_logs import captured_library_logs

    with captured_library_logs() as outer:
        assert Chem.MolFromSmiles("C(C)(C)(C)(C)C") is None  # "Explicit valence ... 5"
        with captured_library_logs() as inner:
            assert Chem.MolFromSmiles("N(C)(C)(C)(C)C") is None
    assert (outer["rdkit"], inner["rdkit"]) == (2, 1)  # blocks nest; the outer one sees both
    assert "valence" not in capfd.readouterr().err
    Chem.MolFromSmiles("O(C)(C)(C)(C)C")  # RDKit prints again after the block
    assert "Explicit valence" in capfd.readouterr().err


def test_posebusters_warnings_are_counted_when_installed(capfd):
    pytest.importorskip("posebusters")
    pentavalent = Chem.MolFromSmiles("C(F)(F)(F)(F)F", sanitize=False)
    pentavalent.UpdatePropertyCache(strict=False)
    AllChem.Compute2DCoords(pentavalent)
    m = evaluate_molecules([pentavalent, from_smiles("CCO")], posebusters=True, xtb=False)
    err = capfd.readouterr().err
    assert m["rdkit_log_lines"] + m["posebusters_log_lines"] >= 1, m
    assert "valence" not in err and "WARNING" not in err, err
