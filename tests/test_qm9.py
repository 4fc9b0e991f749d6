"""QM9 pipeline: fixture rows copied verbatim from qm9pack 1.0.3 (qm9_part*.csv); no wheel needed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from geo3d.data.marginals import molecule_marginals
from geo3d.data.molecules import ATOM_INDEX, BOND_TYPES, data_to_mol
from geo3d.data.qm9 import QM9, QM9_NUM_IDS, build_qm9_cache, load_qm9_cache, midi_split
from geo3d.data.qm9_csv import QM9FormatError, find_qm9_dir, iter_qm9_records
from geo3d.data.qm9_molecule import process_qm9_molecule
from geo3d.data.smiles import canonical_smiles

# Nine real QM9 rows in qm9pack's exact format (header + rows copied from the wheel):
# methane 1, water 3, acetylene 4, formaldehyde 6, pyridine 215, beta-alanine zwitterion 271,
# an amidinium carboxylate whose CSV SMILES is another resonance form 1642, and two that the
# pipeline excludes: 133831 (no valence-consistent bond orders) and 133857 (the geometry's
# bonds give a different cage than the CSV SMILES).
QM9_ROWS = """XYZ_file,Index,SMILES,InChi,N_atoms,Stoichiometry,Elements,XYZ_Ang,Mulliken_pop,Harmonic_Freq_cmi,RotA_GHz,RotB_GHz,RotC_GHz,Dipole_debye,Polarizability_bohr3,HOMO_au,LUMO_au,HOMO_LUMO_gap_au,R2_bohr2,ZPVE_au,InternalEnergy_0K_au,InternalEnergy_298K_au,Enthalphy_298K_au,GibbsFreeEnergy_298K_au,Heatcapacity_Cv_cal_mol_K
"dsgdb9nsd_000001.xyz",1,"C","InChI=1S/CH4/h1H4",5,"[4,1,0,0,0]","['C','H','H','H','H']","[[-0.0126981359,1.0858041578,0.0080009958],[0.002150416,-0.0060313176,0.0019761204],[1.0117308433,1.4637511618,0.0002765748],[-0.540815069,1.4475266138,-0.8766437152],[-0.5238136345,1.4379326443,0.9063972942]]","[-0.535689,0.133921,0.133922,0.133923,0.133923]","[1341.307,1341.3284,1341.365,1562.6731,1562.7453,3038.3205,3151.6034,3151.6788,3151.7078]",157.7118,157.70997,157.70699,0.,13.21,-0.3877,0.1171,0.5048,35.3641,0.044749,-40.47893,-40.476062,-40.475117,-40.498597,6.469
"dsgdb9nsd_000003.xyz",3,"O","InChI=1S/H2O/h1H2",3,"[2,0,0,1,0]","['O','H','H']","[[-0.0343604951,0.9775395708,0.0076015923],[0.0647664923,0.0205721989,0.0015346341],[0.8717903737,1.3007924048,0.0006931336]]","[-0.589706,0.294853,0.294853]","[1671.4222,3803.6305,3907.698]",799.58812,437.90386,282.94545,1.8511,6.31,-0.2928,0.0687,0.3615,19.0002,0.021375,-76.404702,-76.401867,-76.400922,-76.422349,6.002
"dsgdb9nsd_000004.xyz",4,"C#C","InChI=1S/C2H2/c1-2/h1-2H",4,"[2,2,0,0,0]","['C','C','H','H']","[[0.5995394918,0.,1.],[-0.5995394918,0.,1.],[-1.6616385861,0.,1.],[1.6616385861,0.,1.]]","[-0.207019,-0.207019,0.207019,0.207019]","[549.7648,549.7648,795.2713,795.2713,2078.1131,3455.8096,3557.8599]",0.,35.6100361,35.6100361,0.,16.28,-0.2845,0.0506,0.3351,59.5248,0.026841,-77.308427,-77.305527,-77.304583,-77.327429,8.574
"dsgdb9nsd_000006.xyz",6,"C=O","InChI=1S/CH2O/c1-2/h1H2",4,"[2,1,0,1,0]","['C','O','H','H']","[[-0.0139776956,1.1802114286,0.0077524981],[0.0023139861,-0.0196636557,0.0021610727],[0.9149602868,1.789511172,0.0039565555],[-0.9591097173,1.7640179751,0.0171828436]]","[-0.031232,-0.165864,0.098548,0.098548]","[1201.9838,1272.5136,1544.4691,1846.4364,2882.3231,2929.819]",285.48839,38.9823,34.29892,2.1089,14.18,-0.267,-0.0406,0.2263,59.9891,0.026603,-114.483613,-114.480746,-114.479802,-114.505268,6.413
"dsgdb9nsd_000215.xyz",215,"C1=CC=NC=C1","InChI=1S/C5H5N/c1-2-4-6-5-3-1/h1-5H",11,"[5,5,1,0,0]","['C','C','C','N','C','C','H','H','H','H','H']","[[-0.0294202895,1.3896640834,0.0104285645],[1.1839009072,2.0699904425,0.0022445846],[2.3604497801,1.3256760543,-0.0136579488],[2.393610287,-0.0099666862,-0.0215520597],[1.2200579139,-0.648568116,-0.0135259495],[-0.0125339478,-0.0012748579,0.0023764114],[-0.9689982083,1.9323926418,0.022833352],[1.2218066594,3.1536779075,0.0080144952],[3.3259353677,1.8261124856,-0.0203835107],[1.2689447457,-1.734942747,-0.0201755077],[-0.9323305154,-0.575546468,0.0082555288]]","[-0.077649,-0.112292,0.013418,-0.251932,0.013418,-0.112291,0.107632,0.101543,0.108305,0.108305,0.101543]","[385.8701,421.2306,611.3913,666.2081,725.8852,774.3058,905.6194,966.5264,1002.6723,1009.463,1016.4433,1049.3231,1079.3939,1095.4226,1172.5345,1246.0132,1295.4301,1383.6185,1473.1283,1514.8886,1620.6653,1625.9862,3152.9452,3155.3397,3178.556,3194.9806,3203.3848]",6.06065,5.83683,2.97332,2.1103,53.03,-0.2518,-0.0225,0.2293,432.2254,0.088683,-248.211932,-248.207665,-248.206721,-248.239325,16.093
"dsgdb9nsd_000271.xyz",271,"[NH3+]CCC([O-])=O","InChI=1S/C3H7NO2/c4-2-1-3(5)6/h1-2,4H2,(H,5,6)",13,"[7,3,1,2,0]","['N','H','H','H','C','C','C','O','O','H','H','H','H']","[[-0.1154594636,0.9594606304,-0.0418313489],[-0.3257014144,-0.0359798464,0.0587509999],[0.8898694341,1.0428378366,-0.2037360955],[-0.6152111659,1.3176122495,-0.8617376193],[-0.5130594595,1.6754972886,1.2847420453],[0.1633028003,1.0759096615,2.4754813508],[-0.8294842703,1.3117762516,3.7677550055],[-2.0293185494,1.3417178417,3.437502693],[-0.2294997621,1.3877019507,4.8339189894],[-0.2837360253,2.7293622845,1.1145665096],[-1.5918941197,1.527684564,1.4115850922],[0.2264012804,-0.0172612198,2.3831653584],[1.1595647852,1.4748597771,2.6739338795]]","[-0.416518,0.324403,0.319127,0.313023,-0.179898,-0.362148,0.378906,-0.464712,-0.435135,0.144173,0.18265,0.091372,0.104757]","[50.3535,82.7455,195.5306,251.4004,315.183,427.0672,584.9715,647.5721,713.5009,766.9517,794.9767,875.9251,934.7275,1016.5146,1102.4288,1173.8304,1220.2638,1246.4712,1317.5082,1369.1953,1426.5832,1467.8626,1492.258,1635.8458,1655.8076,1836.3709,3016.5939,3050.0361,3113.4677,3137.9545,3377.5469,3488.012,3512.5893]",8.91475,1.86414,1.62849,14.8809,54.51,-0.167,-0.0333,0.1338,714.9069,0.107753,-323.582949,-323.575941,-323.574996,-323.614532,23.572
"dsgdb9nsd_001642.xyz",1642,"C[NH+]=C(N)C([O-])=O","InChI=1S/C3H6N2O2/c1-5-2(4)3(6)7/h1H3,(H2,4,5)(H,6,7)",13,"[6,3,2,2,0]","['C','N','H','C','N','C','O','O','H','H','H','H','H']","[[0.134802023,1.5262507115,0.0106248472],[-0.0605906532,0.0900457703,0.0026961311],[0.7084563279,-0.5871797499,-0.0100867843],[-1.1957783847,-0.5576324916,0.0100243201],[-2.407051273,-0.0512214661,0.0263182181],[-1.0978650227,-2.1366387389,-0.0018958609],[0.0773430027,-2.524517295,-0.0171458589],[-2.2124713946,-2.6710308213,0.0057884513],[1.2037373164,1.740378031,0.0010911178],[-0.3177976401,1.9903046653,-0.8732957703],[-0.2994104097,1.9779935666,0.9100072804],[-2.6446697029,0.9269481342,0.035815191],[-3.1137767591,-0.7879591561,0.0286802374]]","[-0.34933,-0.251872,0.285992,0.3015,-0.497726,0.4044,-0.464147,-0.45954,0.164183,0.148752,0.148738,0.272731,0.296319]","[41.1689,117.7157,162.5132,182.4898,278.5159,389.5413,403.2819,525.3779,552.2748,694.4903,778.5481,796.4097,813.3137,832.9731,971.0322,1150.7782,1157.3503,1193.8965,1265.3672,1313.9453,1450.2998,1479.2862,1489.6143,1506.18,1591.9882,1756.6607,1840.329,3026.6625,3083.3015,3149.5778,3403.665,3446.3038,3670.5213]",4.97294,2.02486,1.45221,8.8749,52.78,-0.2307,-0.0335,0.1972,791.4402,0.101413,-377.816466,-377.808827,-377.807883,-377.84901,25.863
"dsgdb9nsd_133831.xyz",133831,"CC12C3N1C1CC2C=C31","InChI=1S/C8H9N/c1-8-4-2-5-6(3-4)9(8)7(5)8/h2,4,6-7H,3H2,1H3",18,"[9,8,1,0,0]","['C','C','C','N','C','C','C','C','C','H','H','H','H','H','H','H','H','H']","[[7.1290709354,-0.2394741459,1.5433183332],[5.9584522465,-0.6051550939,0.689424832],[5.3767361117,0.3940563587,-0.4207744953],[4.6866763045,0.045639174,0.8531408689],[3.7068457639,-0.8834212227,0.1611100134],[4.2642753839,-2.2859605153,0.4088129725],[5.6962213717,-1.9372891248,-0.0253281834],[5.4605706205,-1.1090924106,-1.3002750864],[4.2219021283,-0.4070971114,-1.2444373508],[7.1031965728,0.8263654012,1.7870042784],[8.072174218,-0.459679481,1.0327901211],[7.1145158904,-0.8009526602,2.4847240928],[5.8221031133,1.3528760915,-0.65166644],[2.6738477027,-0.6809889523,0.4330103816],[3.7955559842,-3.0365330714,-0.2350860201],[4.1979992571,-2.6047717131,1.4542422299],[6.4804955779,-2.6884467708,-0.0017936519],[6.2309481072,-0.970853352,-2.051523826]]","[-0.512303,0.34294,-0.101901,-0.124798,-0.020874,-0.229428,-0.157372,-0.025722,-0.18373,0.140367,0.128019,0.135953,0.111833,0.079773,0.113356,0.104457,0.077544,0.121887]","[161.0343,205.9461,248.5456,323.1099,406.5845,440.0863,562.0272,636.744,678.1317,705.394,764.0574,796.0635,824.1487,840.726,879.2668,907.9444,944.8229,951.5891,968.2226,981.5824,996.1487,1010.5367,1021.3236,1094.0656,1106.1847,1133.187,1163.2488,1170.1658,1190.4552,1225.9884,1249.7364,1275.8723,1300.256,1352.0203,1375.7114,1416.6407,1475.1484,1479.6768,1491.5337,3029.3131,3050.6981,3091.5248,3106.8016,3116.5876,3143.619,3160.4641,3188.9043,3194.8169]",3.14041,2.06404,1.89986,3.7345,80.36,-0.1852,0.0134,0.1985,832.1811,0.147709,-364.679063,-364.672127,-364.671183,-364.709768,28.778
"dsgdb9nsd_133857.xyz",133857,"CC1C2C3C4=CCC13C24","InChI=1S/C9H10/c1-4-6-7-5-2-3-9(4,7)8(5)6/h2,4,6-8H,3H2,1H3",19,"[10,9,0,0,0]","['C','C','C','C','C','C','C','C','C','H','H','H','H','H','H','H','H','H','H']","[[5.3702138268,5.9262994611,-2.4107222797],[4.7982070507,4.7934592265,-3.2350912376],[3.3872393464,4.1938179122,-3.113858888],[4.1282278313,3.3162907071,-1.3355396089],[3.0124213746,2.3483663588,-1.633721534],[3.4099355207,1.4782010536,-2.5917598524],[4.7713441586,1.9128601859,-3.1786465757],[4.6844554889,3.3950485898,-2.7404566674],[2.7965462155,3.8751425082,-1.7369574331],[5.0052729679,6.8921738106,-2.7757535001],[6.4644464895,5.9358123663,-2.4684685629],[5.0896006842,5.8325393693,-1.3588402406],[5.0309240376,4.8753507092,-4.2980118752],[2.8445825414,4.0297617185,-4.0405300505],[4.6270692189,3.3407878156,-0.3738592592],[2.763641441,0.7931608743,-3.1358708154],[4.7738706282,1.7402671452,-4.2616130811],[5.6614241029,1.4169820409,-2.768117947],[2.071903395,4.4474505868,-1.1679911112]]","[-0.418847,-0.108048,-0.095543,-0.096434,-0.027288,-0.070423,-0.344975,0.246948,-0.124985,0.117954,0.118267,0.126856,0.091364,0.081495,0.083527,0.100044,0.110143,0.116114,0.09383]","[189.4457,205.9035,211.324,306.2409,326.5207,395.9492,504.8999,561.7629,630.9614,662.3954,713.6328,733.4168,779.5113,835.196,844.8926,857.3736,906.4747,928.068,938.0484,970.8909,982.9186,1006.4862,1036.203,1075.5216,1082.5481,1103.5354,1123.4539,1136.6129,1174.7522,1225.9128,1230.6016,1241.5262,1291.3893,1307.7739,1331.5888,1408.3258,1440.211,1457.4977,1494.6214,1496.4703,1560.555,3012.9869,3033.1184,3064.7914,3094.1067,3098.1247,3123.595,3146.5801,3148.6706,3161.9777,3181.5274]",3.60121,1.65672,1.41282,1.5261,85.67,-0.2014,-0.0515,0.1498,971.536,0.158963,-348.60836,-348.601028,-348.600084,-348.639441,30.453
"""

# A synthetic row (NH3's geometry with N relabelled Xe) for the out-of-vocabulary reason.
XE_ROW = (
    '"dsgdb9nsd_000002.xyz",2,"N","InChI=1S/H3N/h1H3",4,"[3,0,1,0,0]","[\'Xe\',\'H\',\'H\',\'H\']",'
    '"[[-0.0404260543,1.0241077531,0.0625637998],[0.0172574639,0.0125452063,-0.0273771593],'
    '[0.9157893661,1.3587451948,-0.0287577581],[-0.5202777357,1.3435321258,-0.7755426124]]",'
    '"[-0.707143,0.235712,0.235712,0.23572]","[1103.8733]",293.6,293.5,191.4,1.6256,9.46,-0.257,'
    "0.0829,0.3399,26.1563,0.034358,-56.525887,-56.523026,-56.522082,-56.544961,6.316\n"
)
KEPT = [1, 3, 4, 6, 215, 271, 1642]


@pytest.fixture
def qm9_dir(tmp_path: Path) -> Path:
    """Two parts, like the wheel: part1 with the real rows, part2 with the synthetic one."""
    root = tmp_path / "qm9data"
    root.mkdir()
    header, *rows = QM9_ROWS.splitlines(keepends=True)
    (root / "qm9_part1.csv").write_text(header + "".join(rows))
    (root / "qm9_part2.csv").write_text(header + XE_ROW)
    return root


def _records(root: Path) -> dict[int, tuple]:
    return {r[0]: r for r in iter_qm9_records(sorted(root.glob("qm9_part*.csv")))}


def _bonds(data_bond_type: np.ndarray) -> dict[str, int]:
    """Undirected bond counts by class name (each bond is stored in both directions)."""
    counts = np.bincount(data_bond_type.astype(np.int64), minlength=5) // 2
    return {BOND_TYPES[k]: int(c) for k, c in enumerate(counts) if c}


def test_bonds_and_charges_from_geometry_match_smiles(qm9_dir):
    recs = _records(qm9_dir)
    out = {i: process_qm9_molecule(*recs[i]) for i in recs}
    for i in KEPT:
        assert out[i][0] == "ok", (i, out[i])
    arrays = {i: out[i][3] for i in KEPT}
    # bond orders and canonical SMILES derived from the coordinates alone
    assert _bonds(arrays[1][4]) == {"single": 4} and arrays[1][5] == "C"
    assert _bonds(arrays[4][4]) == {"single": 2, "triple": 1} and arrays[4][5] == "C#C"
    assert _bonds(arrays[6][4]) == {"single": 2, "double": 1} and arrays[6][5] == "C=O"
    # pyridine comes out Kekulé (3 double bonds in the ring), never aromatic
    assert _bonds(arrays[215][4]) == {"single": 8, "double": 3} and arrays[215][5] == "c1ccncc1"
    # zwitterion: +1 on N, -1 on O, neutral overall, as in the CSV SMILES
    pos, atom_type, charge = arrays[271][0], arrays[271][1], arrays[271][2]
    assert arrays[271][5] == "[NH3+]CCC(=O)[O-]" and charge.sum() == 0
    assert sorted(charge.tolist()) == [-1] + [0] * 11 + [1]
    assert atom_type[charge == 1].tolist() == [ATOM_INDEX["N"]]
    assert atom_type[charge == -1].tolist() == [ATOM_INDEX["O"]]
    # positions: the CSV's, centred on their plain mean
    xyz = np.array(recs[271][3].replace("[", "").replace("]", "").split(","), float).reshape(-1, 3)
    assert np.allclose(pos, xyz - xyz.mean(0), atol=1e-5)
    # a resonance form of the CSV structure is kept, flagged
    assert out[1642][2] == "resonance_form" and arrays[1642][2].sum() == 0
    assert out[133831][:3] == ("excluded", 133831, "bond_determination_failed")
    assert out[133857][:3] == ("excluded", 133857, "smiles_mismatch")
    assert "CC1C2C3C4=CCC13C24" in out[133857][3]
    assert out[2][:3] == ("excluded", 2, "element_not_in_vocab") and "Xe" in out[2][3]
    # strict mode excludes the resonance form
    strict = process_qm9_molecule(*recs[1642], accept_resonance=False)
    assert strict[:3] == ("excluded", 1642, "smiles_mismatch")


def test_build_report_split_and_cache_round_trip(qm9_dir, tmp_path, capsys):
    cache = tmp_path / "cache"
    path = build_qm9_cache(qm9_dir, cache, num_workers=0, progress=False)
    printed = capsys.readouterr().out
    assert "bond_determination_failed: 1" in printed and "smiles_mismatch: 1" in printed
    # the wait is announced before it starts, with the number of molecules and where the cache goes
    assert printed.index("QM9: bonds from geometry for 10 molecules") < printed.index("bond_determination")
    assert str(path) in printed.splitlines()[0]
    store = load_qm9_cache(path)  # weights_only=True
    report = store["report"]
    assert report["total"] == 10 and report["kept"] == 7
    assert {k: v for k, v in report["excluded"].items() if v} == {
        "element_not_in_vocab": 1,
        "bond_determination_failed": 1,
        "smiles_mismatch": 1,
    }
    assert report["examples"]["smiles_mismatch"][0][0] == 133857
    assert report["examples"]["bond_determination_failed"][0][0] == 133831
    assert report["kept_with_note"] == {"resonance_form": 1}
    # atomic write: only the final file, no temporary left behind
    assert [p.name for p in cache.iterdir()] == [path.name]

    # MiDi split by id, applied before exclusion, membership from the permutation
    rows = midi_split()
    expect = {s: [int(r) + 1 for r in rows[s] if int(r) + 1 in KEPT] for s in rows}
    assert expect == {"train": [271, 1, 1642, 4, 215], "val": [6], "test": [3]}
    assert report["split_before_exclusion"] == {"train": 7, "val": 2, "test": 1}
    assert report["split"] == {"train": 5, "val": 1, "test": 1}
    recs = _records(qm9_dir)
    for split, ids in expect.items():
        ds = QM9(split, root=qm9_dir, cache_dir=cache, progress=False)
        assert ds.idx.tolist() == ids  # shuffled (split) order
        assert len(ds) == len(ids)
        for k, i in enumerate(ids):
            d = ds[k]
            ref = process_qm9_molecule(*recs[i])[3]
            assert isinstance(d, Data) and int(d.idx) == i and d.smiles == ref[5]
            assert torch.equal(d.pos, torch.from_numpy(ref[0]))
            assert torch.equal(d.atom_type, torch.from_numpy(ref[1]).long())
            assert torch.equal(d.charge, torch.from_numpy(ref[2]).long())
            assert torch.equal(d.edge_index, torch.from_numpy(ref[3]).long())
            assert torch.equal(d.bond_type, torch.from_numpy(ref[4]).long())
            # round trip back to RDKit gives the same molecule
            assert canonical_smiles(data_to_mol(d, sanitize=True)) == d.smiles
    # the cache is reused, not rebuilt
    mtime = path.stat().st_mtime_ns
    assert build_qm9_cache(qm9_dir, cache, num_workers=0, progress=False) == path
    assert path.stat().st_mtime_ns == mtime
    limited = QM9("train", root=qm9_dir, cache_dir=cache, limit=2, progress=False)
    assert limited.idx.tolist() == [271, 1] and limited[-1].smiles == "C"
    with pytest.raises(IndexError):
        limited[2]


def test_midi_split_sizes_and_determinism():
    full = midi_split()
    assert {k: len(v) for k, v in full.items()} == {"train": 100_000, "val": 20_497, "test": 13_388}
    all_rows = np.concatenate(list(full.values()))
    assert np.array_equal(np.sort(all_rows), np.arange(QM9_NUM_IDS))
    # exactly the legacy RandomState stream pandas' DataFrame.sample(frac=1, random_state=42) uses
    perm = np.random.RandomState(42).permutation(QM9_NUM_IDS)
    assert np.array_equal(full["train"], perm[:100_000]) and np.array_equal(full["test"], perm[-13_388:])
    small = midi_split(50, n_train=30)
    assert [len(small[s]) for s in ("train", "val", "test")] == [30, 15, 5]
    again = midi_split(50, n_train=30)
    assert all(np.array_equal(small[s], again[s]) for s in small)
    assert not np.array_equal(midi_split(50, n_train=30, seed=1)["train"], small["train"])
    with pytest.raises(ValueError, match="exceed"):
        midi_split(10, n_train=10)


def _mol(atoms: str, bonds: list[tuple[int, int, int]]) -> Data:
    n = len(atoms.split())
    ei = [(i, j) for i, j, _ in bonds] + [(j, i) for i, j, _ in bonds]
    bt = [b for *_, b in bonds] * 2
    return Data(
        pos=torch.zeros(n, 3),
        atom_type=torch.tensor([ATOM_INDEX[a] for a in atoms.split()]),
        charge=torch.zeros(n, dtype=torch.long),
        edge_index=torch.tensor(ei, dtype=torch.long).T.reshape(2, -1),
        bond_type=torch.tensor(bt, dtype=torch.long),
        smiles="x" + atoms.replace(" ", ""),
    )


def test_statistics_hand_counts():
    methane = _mol("C H H H H", [(0, k, 1) for k in range(1, 5)])
    acetylene = _mol("C C H H", [(0, 1, 3), (0, 2, 1), (1, 3, 1)])
    formaldehyde = _mol("C O H H", [(0, 1, 2), (0, 2, 1), (0, 3, 1)])
    formaldehyde.charge[1] = -1  # any charge, to check the charge histogram
    stats = molecule_marginals([methane, acetylene, formaldehyde])
    assert stats.num_molecules == 3
    assert stats.num_atoms_count.tolist() == [0, 0, 0, 0, 2, 1]
    assert stats.atom_type_count[ATOM_INDEX["H"]] == 8 and stats.atom_type_count[ATOM_INDEX["C"]] == 4
    assert stats.atom_type_count[ATOM_INDEX["O"]] == 1 and stats.atom_type_count.sum() == 13
    assert stats.charge_count.tolist() == [0, 1, 12, 0, 0, 0]
    # pairs: 10 + 6 + 6 = 22; single 4 + 2 + 2, double 1, triple 1, none 12
    assert stats.bond_type_count.tolist() == [12, 8, 1, 1, 0]
    for p in (stats.num_atoms, stats.atom_types, stats.charges, stats.bond_types):
        assert p.dtype == torch.float64 and abs(float(p.sum()) - 1) < 1e-12
    assert torch.allclose(stats.bond_types, torch.tensor([12, 8, 1, 1, 0], dtype=torch.float64) / 22)
    assert len(stats.atom_types) == 16 and len(stats.charges) == 6 and len(stats.bond_types) == 5
    assert stats.smiles == {"xCHHHH", "xCCHH", "xCOHH"}
    assert stats.as_dict()["bond_types"]["triple"] == pytest.approx(1 / 22)


def test_qm9_marginals_fast_path_matches_generic(qm9_dir, tmp_path):
    train = QM9("train", root=qm9_dir, cache_dir=tmp_path / "c", num_workers=0, progress=False)
    fast, slow = molecule_marginals(train), molecule_marginals(list(train))
    for name in ("num_atoms_count", "atom_type_count", "charge_count", "bond_type_count"):
        assert torch.equal(getattr(fast, name), getattr(slow, name)), name
    assert (
        fast.smiles == slow.smiles == {"[NH3+]CCC(=O)[O-]", "c1ccncc1", "C", "C#C", "CNC(=[NH2+])C(=O)[O-]"}
    )
    # by hand: CH4, C3H7NO2 (271), C2H2, C3H6N2O2 (1642), C5H5N -> 46 atoms, 24 H, 2 zwitterions
    assert fast.atom_type_count[ATOM_INDEX["H"]] == 4 + 7 + 2 + 6 + 5
    assert fast.num_atoms_count.sum() == 5 and int(fast.atom_type_count.sum()) == 46
    assert fast.charge_count.tolist() == [0, 2, 42, 2, 0, 0]


def test_locating_data_and_bad_input(qm9_dir, tmp_path, monkeypatch):
    assert find_qm9_dir(qm9_dir) == qm9_dir
    assert find_qm9_dir(qm9_dir.parent / "qm9data") == qm9_dir
    # a package-style folder with data/ inside
    pkg = tmp_path / "pkg"
    (pkg / "data").mkdir(parents=True)
    (pkg / "data" / "qm9_part1.csv").write_text((qm9_dir / "qm9_part1.csv").read_text())
    assert find_qm9_dir(pkg) == pkg / "data"
    monkeypatch.setenv("GEO3D_QM9_DIR", str(qm9_dir))
    assert find_qm9_dir() == qm9_dir
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"geo3d\[qm9\]"):
        find_qm9_dir(empty)
    with pytest.raises(ValueError, match="split"):
        QM9("training", root=qm9_dir, cache_dir=tmp_path / "c")

    # a truncated coordinate list: error names the file and the line, nothing is cached
    bad = tmp_path / "bad"
    bad.mkdir()
    header, first, second, *_ = QM9_ROWS.splitlines(keepends=True)
    second = second.replace("[[-0.0343604951,0.9775395708,0.0076015923],", "[[")
    (bad / "qm9_part1.csv").write_text(header + first + second)
    with pytest.raises(QM9FormatError, match=r"qm9_part1\.csv, line 3: XYZ_Ang has 6 numbers"):
        build_qm9_cache(bad, tmp_path / "c2", num_workers=0, progress=False)
    assert not (tmp_path / "c2").exists()
    (bad / "qm9_part1.csv").write_text(header.replace("XYZ_Ang", "XYZ") + first)
    with pytest.raises(QM9FormatError, match=r"line 1: header lacks .*XYZ_Ang"):
        build_qm9_cache(bad, tmp_path / "c2", num_workers=0, progress=False)


def test_cache_dir_from_environment(qm9_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("GEO3D_CACHE", str(tmp_path / "envcache"))
    path = build_qm9_cache(qm9_dir, num_workers=0, progress=False, verbose=False)
    assert path.parent == tmp_path / "envcache" / "qm9" and path.is_file()
    assert os.path.getsize(path) > 0
