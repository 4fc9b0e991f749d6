"""SDF, gdb9.sdf and GEOM-pickle loaders: fixture files are written by the tests themselves."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import pytest
import torch
from rdkit import Chem
from rdkit.Chem import AllChem

from geo3d.data.geom import GeomFormatError, load_geom_drugs
from geo3d.data.molecules import ATOM_INDEX, MoleculeError
from geo3d.data.sdf import SDFRecordError, iter_sdf_blocks, load_gdb9_sdf, read_sdf, read_uncharacterized


def _embedded(smiles: str, seed: int = 7, n_conf: int = 1) -> Chem.Mol:
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    ids = AllChem.EmbedMultipleConfs(mol, numConfs=n_conf, randomSeed=seed)
    assert len(ids) == n_conf
    mol.SetProp("_Name", smiles)
    return mol


def _write_sdf(path: Path, mols: list[Chem.Mol], kekulize: bool = True) -> None:
    with Chem.SDWriter(str(path)) as writer:
        writer.SetKekulize(kekulize)
        for m in mols:
            writer.write(m)


# A record RDKit cannot parse: the counts line announces 3 atoms, only 2 follow.
BROKEN_RECORD = """broken
     RDKit          3D

  3  1  0  0  0  0  0  0  0  0999 V2000
    0.0000    0.0000    0.0000 C   0  0  0  0  0  0  0  0  0  0  0  0
    1.2000    0.0000    0.0000 O   0  0  0  0  0  0  0  0  0  0  0  0
M  END
$$$$
"""

# Parses, but carbon has five bonds: sanitisation must fail.
PENTAVALENT_RECORD = """pentavalent
     RDKit          3D

  6  5  0  0  0  0  0  0  0  0999 V2000
    0.0000    0.0000    0.0000 C   0  0  0  0  0  0  0  0  0  0  0  0
    1.0900    0.0000    0.0000 H   0  0  0  0  0  0  0  0  0  0  0  0
   -1.0900    0.0000    0.0000 H   0  0  0  0  0  0  0  0  0  0  0  0
    0.0000    1.0900    0.0000 H   0  0  0  0  0  0  0  0  0  0  0  0
    0.0000   -1.0900    0.0000 H   0  0  0  0  0  0  0  0  0  0  0  0
    0.0000    0.0000    1.0900 H   0  0  0  0  0  0  0  0  0  0  0  0
  1  2  1  0
  1  3  1  0
  1  4  1  0
  1  5  1  0
  1  6  1  0
M  END
$$$$
"""


@pytest.fixture(scope="module")
def three_mols() -> list[Chem.Mol]:
    # ethanol, benzene (aromatic -> Kekulé), nitromethane (formal charges +1 / -1)
    return [_embedded("CCO"), _embedded("c1ccccc1"), _embedded("C[N+](=O)[O-]")]


def test_read_sdf_three_molecules(tmp_path, three_mols):
    path = tmp_path / "three.sdf"
    _write_sdf(path, three_mols)
    data = read_sdf(path)
    assert len(data) == 3
    ethanol, benzene, nitro = data
    # explicit hydrogens kept as in the file
    assert [d.num_nodes for d in data] == [9, 12, 7]
    assert int((ethanol.atom_type == ATOM_INDEX["H"]).sum()) == 6
    ref = torch.tensor(three_mols[0].GetConformer().GetPositions(), dtype=torch.float32)
    assert torch.allclose(ethanol.pos, ref, atol=1e-4)  # SDF keeps 4 decimals
    # benzene Kekulized: 3 single + 3 double C-C bonds (each stored twice), 6 C-H singles
    assert sorted(benzene.bond_type.tolist()).count(2) == 6 and 4 not in benzene.bond_type.tolist()
    assert int((benzene.bond_type == 1).sum()) == 2 * 9
    assert sorted(nitro.charge.tolist()) == [-1, 0, 0, 0, 0, 0, 1]
    assert [d.smiles for d in data] == ["CCO", "c1ccccc1", "C[N+](=O)[O-]"]
    assert [d.name for d in data] == ["CCO", "c1ccccc1", "C[N+](=O)[O-]"]
    # kekulize=False keeps aromatic bonds as class 4
    arom = read_sdf(path, kekulize=False)[1]
    assert int((arom.bond_type == 4).sum()) == 12
    # center=True moves the plain mean to the origin
    centred = read_sdf(path, center=True)[0]
    assert centred.pos.mean(0).abs().max() < 1e-5


def test_broken_record_names_file_record_and_line(tmp_path, three_mols):
    path = tmp_path / "with_broken.sdf"
    _write_sdf(path, three_mols[:2])
    with open(path, "a") as fh:
        fh.write(BROKEN_RECORD)
    _write_sdf(tmp_path / "tail.sdf", three_mols[2:])
    with open(path, "a") as fh:
        fh.write((tmp_path / "tail.sdf").read_text())
    assert sum(1 for _ in iter_sdf_blocks(path)) == 4
    broken_line = path.read_text().splitlines().index("broken") + 1

    with pytest.raises(SDFRecordError) as err:
        read_sdf(path)
    msg = str(err.value)
    assert "with_broken.sdf" in msg and "record 3" in msg and f"line {broken_line}" in msg
    assert isinstance(err.value, MoleculeError)

    with pytest.warns(UserWarning, match=r"with_broken\.sdf, record 3"):
        data = read_sdf(path, errors="warn")
    assert [d.smiles for d in data] == ["CCO", "c1ccccc1", "C[N+](=O)[O-]"]


def test_sanitization_failure_is_reported(tmp_path, three_mols):
    path = tmp_path / "bad_valence.sdf"
    _write_sdf(path, three_mols[:1])
    with open(path, "a") as fh:
        fh.write(PENTAVALENT_RECORD)
    with pytest.raises(SDFRecordError, match=r"bad_valence\.sdf, record 2 .*sanitization failed"):
        read_sdf(path)
    # unsanitised reading takes the record as written
    data = read_sdf(path, sanitize=False, kekulize=False)
    assert len(data) == 2 and data[1].num_nodes == 6


def test_read_sdf_folder_and_missing(tmp_path, three_mols):
    _write_sdf(tmp_path / "b.sdf", three_mols[1:])
    _write_sdf(tmp_path / "a.sdf", three_mols[:1])
    (tmp_path / "notes.txt").write_text("not an sdf")
    assert [d.smiles for d in read_sdf(tmp_path)] == ["CCO", "c1ccccc1", "C[N+](=O)[O-]"]
    with pytest.raises(FileNotFoundError, match=r"nope\.sdf"):
        read_sdf(tmp_path / "nope.sdf")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no \.sdf files"):
        read_sdf(tmp_path / "empty_dir")


# QM9's uncharacterized.txt layout: description, rules, a table, a closing rule.
UNCHARACTERIZED = """


List of molecules among the 133885 GDB9 molecules for which the Corina generated Cartesian coordinates
and the B3LYP/6-31G(2df,p) equilibrium geometry lead to different SMILES and InChI strings.

=====================================================================================
#   Index       GDB17 SMILES       SMILES for B3LYP XYZ     SMILES for Corina XYZ    D_IJ
=====================================================================================
       2             CCO                   CCO                     CCO          6.036217
=====================================================================================
"""


def test_load_gdb9_sdf(tmp_path, three_mols):
    mols = [Chem.Mol(m) for m in three_mols]
    # gdb9.sdf writes some neutral 4-valent nitrogens: RDKit would refuse to sanitise them
    n4 = Chem.RWMol(mols[2])
    for atom in n4.GetAtoms():
        atom.SetFormalCharge(0)
    mols[2] = n4.GetMol()
    for k, m in enumerate(mols, start=1):
        m.SetProp("_Name", f"gdb_{k}")
    sdf = tmp_path / "gdb9.sdf"
    with Chem.SDWriter(str(sdf)) as writer:
        writer.SetKekulize(True)
        for m in mols:
            writer.write(m)
    unch = tmp_path / "uncharacterized.txt"
    unch.write_text(UNCHARACTERIZED)
    assert read_uncharacterized(unch) == {2}
    csv_path = tmp_path / "gdb9.sdf.csv"
    csv_path.write_text("mol_id,A,mu\ngdb_1,1.5,0.1\ngdb_2,2.5,0.2\ngdb_3,3.5,0.3\n")

    data = load_gdb9_sdf(sdf, csv_path=csv_path, uncharacterized=unch)
    assert [int(d.idx) for d in data] == [1, 3]
    assert torch.allclose(data[1].y, torch.tensor([[3.5, 0.3]]))
    assert all(d.pos.mean(0).abs().max() < 1e-5 for d in data)
    assert data[1].charge.abs().sum() == 0  # charges exactly as written, no sanitisation
    assert 4 not in data[0].bond_type.tolist()
    # a list of ids works too; no exclusions -> all three
    assert len(load_gdb9_sdf(sdf, uncharacterized=[])) == 3
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("mol_id,A\ngdb_1,1.0\n")
    with pytest.raises(SDFRecordError, match=r"record 2 .*id 2 is not in"):
        load_gdb9_sdf(sdf, csv_path=bad_csv)


def _geom_pickle(path: Path) -> list:
    ethanol = _embedded("CCO", n_conf=7)
    confs = []
    for conf in ethanol.GetConformers():  # MiDi stores each conformer as its own Mol
        m = Chem.Mol(ethanol)
        m.RemoveAllConformers()
        m.AddConformer(Chem.Conformer(conf), assignId=True)
        confs.append(m)
    pyridine = _embedded("c1ccncc1", n_conf=2)
    pyr = []
    for conf in pyridine.GetConformers():
        m = Chem.Mol(pyridine)
        m.RemoveAllConformers()
        m.AddConformer(Chem.Conformer(conf), assignId=True)
        pyr.append(m)
    entries = [("CCO", confs), ("c1ccncc1", pyr)]
    with open(path, "wb") as fh:
        pickle.dump(entries, fh)
    return entries


def test_load_geom_drugs(tmp_path):
    entries = _geom_pickle(tmp_path / "train_data.pickle")
    data = load_geom_drugs(tmp_path, split="train")
    # at most 5 conformers per molecule (ethanol has 7), all of pyridine's 2
    assert [(int(d.idx), int(d.conformer)) for d in data] == [(0, j) for j in range(5)] + [(1, 0), (1, 1)]
    assert [d.smiles for d in data] == ["CCO"] * 5 + ["c1ccncc1"] * 2
    # positions are the conformer's, centred on their plain mean
    ref = torch.tensor(entries[0][1][3].GetConformer().GetPositions(), dtype=torch.float32)
    assert torch.allclose(data[3].pos, ref - ref.mean(0), atol=1e-5)
    # aromatic bonds kept as class 4 by default, Kekulé on request
    assert int((data[5].bond_type == 4).sum()) == 12
    kek = load_geom_drugs(tmp_path / "train_data.pickle", kekulize=True, max_conformers=1)
    assert len(kek) == 2 and 4 not in kek[1].bond_type.tolist() and int((kek[1].bond_type == 2).sum()) == 6
    assert len(load_geom_drugs(tmp_path / "train_data.pickle", max_conformers=None)) == 9
    assert len(load_geom_drugs(tmp_path / "train_data.pickle", limit=1)) == 5


def test_geom_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"val_data\.pickle"):
        load_geom_drugs(tmp_path, split="val")
    bad = tmp_path / "bad.pickle"
    with open(bad, "wb") as fh:
        pickle.dump([("CCO", [_embedded("CCO")]), ("CC", "not a list")], fh)
    with pytest.raises(GeomFormatError, match=r"bad\.pickle, entry 1"):
        load_geom_drugs(bad)
    # an element outside the vocabulary: raise by default, skip with a warning on request
    xe = tmp_path / "xe.pickle"
    ok = _embedded("CCO")
    odd = Chem.RWMol(_embedded("CCO"))
    odd.GetAtomWithIdx(2).SetAtomicNum(54)
    with open(xe, "wb") as fh:
        pickle.dump([("CCO", [ok]), ("CC[Xe]", [odd.GetMol()])], fh)
    with pytest.raises(MoleculeError, match=r"xe\.pickle, entry 1 .*conformer 0.*'Xe'"):
        load_geom_drugs(xe)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert len(load_geom_drugs(xe, errors="warn")) == 1
    assert any("entry 1" in str(w.message) for w in caught)
