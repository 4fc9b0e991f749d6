"""The meshes of the Shapes classes, ``class_meshes(label, rng, hard) -> [[mesh, ...] per part]``.

One builder per class (:data:`geo3d.data.shapes.CLASSES`, same order), with both
difficulties side by side. The two draw different proportions and arrangements from the
same ``rng``, and the standard draws must stay exactly what they were: they define the
standard set the shipped point-cloud models were trained and scored on. So a builder
only shares code between its two variants where the random stream stays the same
(``tests/test_shapes_hard.py`` pins both sets), and a new class needs both variants.
"""

from __future__ import annotations

import math

import numpy as np
from trimesh import creation


def placed(mesh, x=0.0, y=0.0, z=0.0):
    """``mesh`` translated by ``(x, y, z)`` (in place)."""
    mesh.apply_translation([x, y, z])
    return mesh


def rotated(mesh, axis, angle):
    """``mesh`` rotated by ``angle`` about ``axis`` through the origin (in place)."""
    import trimesh

    mesh.apply_transform(trimesh.transformations.rotation_matrix(angle, axis))
    return mesh


def uniform(rng, lo, hi):
    """A float drawn uniformly from ``[lo, hi)`` by ``rng``."""
    return float(rng.uniform(lo, hi))


at, rot, u = placed, rotated, uniform

# The hard variants: global distance statistics overlap across classes while the arrangement
# of the parts still decides. The builders' shared pieces:


def _corner_legs(radius, height, x, y):
    """Four upright legs of the standard table and chair, at ``(+-x, +-y)`` (no random draws)."""
    return [
        placed(creation.cylinder(radius, height, sections=12), sx * x, sy * y, height / 2)
        for sx in (-1, 1)
        for sy in (-1, 1)
    ]


def _legs(feet_xy, height, radius, splay, sections):
    """Legs from ``(x, y, height)`` down to the floor, their feet pushed out by ``splay`` (a fraction)."""
    return [
        creation.cylinder(
            radius, segment=[[x * (1 + splay), y * (1 + splay), 0.0], [x, y, height]], sections=sections
        )
        for x, y in feet_xy
    ]


def _leg_layout(rng, half_w, half_d, round_top):
    """Where legs meet a top: 4 corners of a rectangle, or 3 or 4 legs evenly around a round top."""
    inset = 1 - uniform(rng, 0.05, 0.3)
    if not round_top:
        return [(sx * half_w * inset, sy * half_d * inset) for sx in (-1, 1) for sy in (-1, 1)]
    n = int(rng.integers(3, 5))
    return [
        (half_w * inset * math.cos(2 * math.pi * k / n), half_w * inset * math.sin(2 * math.pi * k / n))
        for k in range(n)
    ]


def _pedestal(rng, height, foot_r):
    """A central column on a foot disk (a pedestal table or a swivel chair's base)."""
    foot_t = uniform(rng, 0.03, 0.08)
    col_r = foot_r * uniform(rng, 0.12, 0.3)
    return [
        placed(creation.cylinder(col_r, height, sections=16), z=height / 2),
        placed(creation.cylinder(foot_r, foot_t, sections=24), z=foot_t / 2),
    ]


def _box(rng, hard):
    if hard:
        return [[creation.box(np.exp(rng.uniform(math.log(0.25), math.log(1.5), 3)))]]
    return [[creation.box((u(rng, 0.5, 1.5), u(rng, 0.5, 1.5), u(rng, 0.5, 1.5)))]]


def _sphere(rng, hard):
    m = creation.icosphere(subdivisions=3, radius=1.0)
    lo, hi = (0.6, 1.4) if hard else (0.8, 1.2)
    m.apply_scale(rng.uniform(lo, hi, 3))
    return [[m]]


def _cylinder(rng, hard):
    (r0, r1), (h0, h1) = ((0.15, 0.9), (0.3, 3.0)) if hard else ((0.3, 0.7), (1.0, 2.5))
    return [[creation.cylinder(u(rng, r0, r1), u(rng, h0, h1), sections=32)]]


def _cone(rng, hard):
    (r0, r1), (h0, h1) = ((0.25, 1.0), (0.4, 2.5)) if hard else ((0.4, 0.9), (0.8, 2.0))
    return [[creation.cone(u(rng, r0, r1), u(rng, h0, h1), sections=32)]]


def _capsule(rng, hard):
    if hard:
        r = u(rng, 0.15, 0.7)
        return [[creation.capsule(height=r * u(rng, 1.0, 5.0), radius=r)]]
    return [[creation.capsule(height=u(rng, 0.5, 2.0), radius=u(rng, 0.3, 0.6))]]


def _torus(rng, hard):
    if hard:
        major = u(rng, 0.6, 1.0)
        return [[creation.torus(major, major * u(rng, 0.1, 0.45), major_sections=32, minor_sections=12)]]
    return [[creation.torus(u(rng, 0.7, 1.0), u(rng, 0.15, 0.4))]]


def _table(rng, hard):
    if hard:
        w, h, t = u(rng, 1.0, 2.2), u(rng, 0.45, 1.3), u(rng, 0.03, 0.18)
        round_top = rng.random() < 0.35
        d = w if round_top else w * u(rng, 0.45, 1.0)
        top = creation.cylinder(w / 2, t, sections=32) if round_top else creation.box((w, d, t))
        if rng.random() < 0.25:
            legs = _pedestal(rng, h, w * u(rng, 0.2, 0.35))
        else:
            sections = 4 if rng.random() < 0.5 else 10
            feet = _leg_layout(rng, w / 2, d / 2, round_top)
            legs = _legs(feet, h, w * u(rng, 0.015, 0.05), u(rng, 0.0, 0.2), sections)
        return [[at(top, z=h + t / 2)], legs]
    w, d, h, t = u(rng, 1.2, 2.0), u(rng, 0.8, 1.4), u(rng, 0.8, 1.2), u(rng, 0.05, 0.15)
    r = u(rng, 0.04, 0.1)
    legs = _corner_legs(r, h, w / 2 - 2 * r, d / 2 - 2 * r)
    return [[at(creation.box((w, d, t)), z=h + t / 2)], legs]


def _chair(rng, hard):
    if hard:
        w, h, t = u(rng, 0.6, 1.2), u(rng, 0.45, 1.1), u(rng, 0.04, 0.12)
        d, back_h, back_t = w * u(rng, 0.8, 1.25), u(rng, 0.35, 1.3), u(rng, 0.03, 0.1)
        if rng.random() < 0.25:
            legs = _pedestal(rng, h, w * u(rng, 0.35, 0.5))
        else:
            feet = _leg_layout(rng, w / 2, d / 2, False)
            legs = _legs(feet, h, w * u(rng, 0.02, 0.06), u(rng, 0.0, 0.15), 4 if rng.random() < 0.5 else 10)
        if rng.random() < 0.35:  # two posts and a top rail
            post_r = back_t / 2
            back = [
                at(creation.cylinder(post_r, back_h, sections=8), x=sx * (w / 2 - post_r), z=back_h / 2)
                for sx in (-1, 1)
            ]
            rail_h = back_h * u(rng, 0.2, 0.4)
            back.append(at(creation.box((w, back_t, rail_h)), z=back_h - rail_h / 2))
        else:
            back = [at(creation.box((w * u(rng, 0.7, 1.0), back_t, back_h)), z=back_h / 2)]
        tilt = u(rng, 0.0, 0.35)  # leaning backwards, away from the seat
        back = [at(rot(m, [1, 0, 0], -tilt), y=d / 2 - back_t / 2, z=h + t) for m in back]
        return [[at(creation.box((w, d, t)), z=h + t / 2)], legs, back]
    w, h, t, back = u(rng, 0.8, 1.1), u(rng, 0.8, 1.1), u(rng, 0.05, 0.12), u(rng, 0.7, 1.2)
    r = u(rng, 0.03, 0.07)
    legs = _corner_legs(r, h, w / 2 - 2 * r, w / 2 - 2 * r)
    return [
        [at(creation.box((w, w, t)), z=h + t / 2)],
        legs,
        [at(creation.box((w, t, back)), y=w / 2 - t / 2, z=h + t + back / 2)],
    ]


def _mug(rng, hard):
    if hard:
        r, h = u(rng, 0.3, 0.7), u(rng, 0.5, 1.6)
        major = h * u(rng, 0.22, 0.4)
        handle = rot(
            creation.torus(major, major * u(rng, 0.18, 0.32), major_sections=24, minor_sections=8),
            [1, 0, 0],
            math.pi / 2,
        )
        handle.apply_scale([u(rng, 0.6, 1.1), 1, 1])  # round or flattened against the body
        z = u(rng, -1, 1) * max(0.0, h / 2 - major)
        return [[creation.cylinder(r, h, sections=32)], [at(handle, x=r + major * u(rng, 0.1, 0.5), z=z)]]
    r, h = u(rng, 0.4, 0.6), u(rng, 0.9, 1.4)
    handle = rot(creation.torus(u(rng, 0.25, 0.35), u(rng, 0.04, 0.08)), [1, 0, 0], math.pi / 2)
    return [[creation.cylinder(r, h, sections=32)], [at(handle, x=r + 0.2)]]


def _lamp(rng, hard):
    if hard:
        base_t = u(rng, 0.03, 0.15)
        if rng.random() < 0.7:
            base_r = u(rng, 0.2, 0.55)
            base = creation.cylinder(base_r, base_t, sections=32)
        else:
            base_r = u(rng, 0.2, 0.5)
            base = creation.box((2 * base_r, 2 * base_r * u(rng, 0.6, 1.0), base_t))
        pole_h, pole_r = u(rng, 0.6, 2.2), u(rng, 0.015, 0.06)
        x = u(rng, -0.6, 0.6) * base_r  # the pole need not stand in the middle of the base
        sr, sh = u(rng, 0.25, 0.8), u(rng, 0.25, 0.9)
        shade = creation.cone(sr, sh, sections=32)
        if rng.random() < 0.3:  # an uplighter: the shade opens upwards
            shade = at(rot(shade, [1, 0, 0], math.pi), z=sh)
        return [
            [at(base, z=base_t / 2)],
            [at(creation.cylinder(pole_r, pole_h, sections=12), x=x, z=pole_h / 2)],
            [at(shade, x=x, z=pole_h - sh * u(rng, 0.05, 0.5))],
        ]
    base_h, pole_h = u(rng, 0.05, 0.15), u(rng, 1.0, 2.0)
    shade = creation.cone(u(rng, 0.4, 0.7), u(rng, 0.4, 0.7), sections=32)
    return [
        [creation.cylinder(u(rng, 0.3, 0.5), base_h, sections=32)],
        [at(creation.cylinder(u(rng, 0.03, 0.06), pole_h, sections=12), z=pole_h / 2)],
        [at(shade, z=pole_h - 0.1)],
    ]


def _bottle(rng, hard):
    if hard:
        r, h = u(rng, 0.22, 0.6), u(rng, 0.7, 2.0)
        nr, nh = r * u(rng, 0.25, 0.55), u(rng, 0.15, 0.7)
        body = [
            creation.cylinder(r, h, sections=32)
            if rng.random() < 0.7
            else creation.box((2 * r, 2 * r * u(rng, 0.6, 1.0), h))
        ]
        neck_z = h / 2
        if rng.random() < 0.6:  # a shoulder narrowing into the neck
            sh = r * u(rng, 0.4, 1.5)
            body.append(at(creation.cone(r, sh, sections=32), z=h / 2))
            neck_z += sh * (1 - nr / r)
        cap_r, cap_h = nr * u(rng, 1.05, 1.4), u(rng, 0.06, 0.2)
        return [
            body,
            [at(creation.cylinder(nr, nh, sections=24), z=neck_z + nh / 2)],
            [at(creation.cylinder(cap_r, cap_h, sections=24), z=neck_z + nh + cap_h / 2)],
        ]
    r, h = u(rng, 0.3, 0.5), u(rng, 1.0, 1.6)
    nr, nh = u(rng, 0.1, 0.18), u(rng, 0.3, 0.6)
    return [
        [creation.cylinder(r, h, sections=32)],
        [at(creation.cylinder(nr, nh, sections=24), z=h / 2 + nh / 2)],
        [at(creation.cylinder(nr * 1.3, 0.1, sections=24), z=h / 2 + nh + 0.05)],
    ]


def _airplane(rng, hard):
    if hard:
        length, fr = u(rng, 1.6, 3.6), u(rng, 0.1, 0.3)
        body = rot(creation.capsule(height=length, radius=fr), [0, 1, 0], math.pi / 2)
        span, chord, sweep = u(rng, 1.2, 3.8), u(rng, 0.25, 0.8), u(rng, -0.1, 0.6)
        wx, wz = u(rng, -0.15, 0.3) * length, u(rng, -0.7, 0.7) * fr  # fore/aft, high/low wing
        wings = [
            at(
                rot(at(creation.box((chord, span / 2, 0.04)), y=s * span / 4), [0, 0, 1], s * sweep),
                x=wx,
                z=wz,
            )
            for s in (-1, 1)
        ]
        fin_h, tail_x = u(rng, 0.25, 0.7), -length / 2 - fr * u(rng, 0.0, 0.8)
        fin = at(creation.box((u(rng, 0.2, 0.45), 0.04, fin_h)), x=tail_x, z=fr * 0.5 + fin_h / 2)
        stab_z = fr * 0.5 + fin_h if rng.random() < 0.25 else 0.0  # a T-tail or a low tail
        stab = at(creation.box((u(rng, 0.2, 0.45), span * u(rng, 0.2, 0.45), 0.03)), x=tail_x, z=stab_z)
        return [[body], wings, [stab, fin]]
    length, span = u(rng, 2.0, 3.0), u(rng, 2.0, 3.5)
    body = rot(creation.capsule(height=length, radius=u(rng, 0.15, 0.25)), [0, 1, 0], math.pi / 2)
    wing = creation.box((u(rng, 0.4, 0.7), span, 0.05))
    tail = at(creation.box((0.3, u(rng, 0.6, 1.0), 0.04)), x=-length / 2)
    fin = at(creation.box((0.3, 0.04, u(rng, 0.3, 0.6))), x=-length / 2, z=0.25)
    return [[body], [wing], [tail, fin]]


def _dumbbell(rng, hard):
    if hard:
        length, bar_r = u(rng, 0.6, 2.4), u(rng, 0.03, 0.12)
        bar = rot(creation.cylinder(bar_r, length, sections=16), [0, 1, 0], math.pi / 2)
        if rng.random() < 0.4:
            r = u(rng, 0.15, 0.55)
            weights = [at(creation.icosphere(2, r), x=s * length / 2) for s in (-1, 1)]
        else:  # one to three discs at each end
            n, r, t = int(rng.integers(1, 4)), u(rng, 0.2, 0.6), u(rng, 0.04, 0.2)
            inset = u(rng, 0.0, 0.2) * length
            weights = [
                creation.cylinder(r, segment=[[x0, 0, 0], [x0 + s * t, 0, 0]], sections=32)
                for s in (-1, 1)
                for k in range(n)
                for x0 in [s * (length / 2 - inset - (k + 1) * t)]
            ]
        return [[bar], weights]
    length, r = u(rng, 1.0, 2.0), u(rng, 0.25, 0.45)
    bar = rot(creation.cylinder(u(rng, 0.05, 0.1), length, sections=16), [0, 1, 0], math.pi / 2)
    weights = [at(creation.icosphere(2, r), x=s * length / 2) for s in (-1, 1)]
    return [[bar], weights]


def _snowman(rng, hard):
    if hard:
        r1 = u(rng, 0.4, 0.8)
        r2 = r1 * u(rng, 0.55, 0.95)
        r3 = r2 * u(rng, 0.5, 0.95)
        z2 = (r1 + r2) * u(rng, 0.7, 0.95)
        z3 = z2 + (r2 + r3) * u(rng, 0.7, 0.95)
        balls = [creation.icosphere(2, r) for r in (r1, r2, r3)]
        for b in balls:
            b.apply_scale([1, 1, u(rng, 0.85, 1.1)])
        return [[balls[0]], [at(balls[1], z=z2)], [at(balls[2], z=z3)]]
    r1, r2, r3 = u(rng, 0.5, 0.7), u(rng, 0.35, 0.5), u(rng, 0.2, 0.35)
    return [
        [creation.icosphere(2, r1)],
        [at(creation.icosphere(2, r2), z=r1 + r2 * 0.8)],
        [at(creation.icosphere(2, r3), z=r1 + 1.6 * r2 + r3 * 0.8)],
    ]


def _rocket(rng, hard):
    if hard:
        r, h = u(rng, 0.12, 0.45), u(rng, 0.8, 3.0)
        if rng.random() < 0.3:  # a rounded nose
            nose = creation.icosphere(2, r)
            nose.apply_scale([1, 1, u(rng, 1.0, 3.0)])
        else:
            nose = creation.cone(r, r * u(rng, 1.0, 4.0), sections=32)
        n, span, fin_h = int(rng.integers(3, 5)), r * u(rng, 0.8, 2.5), h * u(rng, 0.15, 0.4)
        z = -h / 2 + fin_h / 2 - fin_h * u(rng, 0.0, 0.3)
        fins = [
            rot(
                at(creation.box((0.03, span, fin_h)), y=r + span / 2 - 0.02, z=z),
                [0, 0, 1],
                2 * math.pi * k / n,
            )
            for k in range(n)
        ]
        return [[creation.cylinder(r, h, sections=32)], [at(nose, z=h / 2)], fins]
    r, h = u(rng, 0.2, 0.35), u(rng, 1.5, 2.5)
    fins = [
        rot(at(creation.box((0.03, 0.4, 0.4)), y=r + 0.15, z=-h / 2 + 0.2), [0, 0, 1], k * math.pi / 2)
        for k in range(4)
    ]
    return [
        [creation.cylinder(r, h, sections=32)],
        [at(creation.cone(r, u(rng, 0.4, 0.8), sections=32), z=h / 2)],
        fins,
    ]


def _mushroom(rng, hard):
    if hard:
        stem_r, stem_h = u(rng, 0.07, 0.3), u(rng, 0.3, 1.4)
        cap_r = max(u(rng, 0.35, 1.0), 2.5 * stem_r)
        flat = u(rng, 0.25, 0.8)
        cap = creation.icosphere(3, cap_r)
        cap.apply_scale([1, 1, flat])
        cap_z = stem_h / 2 + cap_r * flat * u(rng, -0.3, 0.3)
        return [[creation.cylinder(stem_r, stem_h, sections=24)], [at(cap, z=cap_z)]]
    stem_h = u(rng, 0.6, 1.2)
    cap = creation.icosphere(3, u(rng, 0.5, 0.8))
    cap.apply_scale([1, 1, u(rng, 0.4, 0.7)])
    return [[creation.cylinder(u(rng, 0.1, 0.25), stem_h, sections=24)], [at(cap, z=stem_h / 2)]]


_BUILDERS = [
    _box,
    _sphere,
    _cylinder,
    _cone,
    _capsule,
    _torus,
    _table,
    _chair,
    _mug,
    _lamp,
    _bottle,
    _airplane,
    _dumbbell,
    _snowman,
    _rocket,
    _mushroom,
]


def class_meshes(label: int, rng: np.random.Generator, hard: bool = False) -> list[list]:
    """The meshes of one instance of class ``label``, grouped by part (``PARTS`` order).

    ``hard``: wide, independent proportions and several arrangements per class (legs at
    the corners, splayed or on a pedestal; handles at any height; high or low, swept
    wings; spherical or disc weights; ...).
    """
    return _BUILDERS[label](rng, hard)
