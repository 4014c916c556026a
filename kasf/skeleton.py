"""Human3.6M-17 skeleton facts shared by the model, training, export and runtime.

Every module that needs a joint index, a bone or a flip pair imports it from here, so the conventions of
``docs/conventions.md`` exist exactly once in code.
"""

from __future__ import annotations

SKELETON_NAME = "h36m-17"
NUM_JOINTS = 17

JOINT_NAMES: tuple[str, ...] = (
    "pelvis", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    "spine", "thorax", "neck_nose", "head_top",
    "left_shoulder", "left_elbow", "left_wrist", "right_shoulder", "right_elbow", "right_wrist",
)
ROOT_JOINT = 0
PARENTS: tuple[int, ...] = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15)

# Bone Extractor: bone k runs between BONE_PROXIMAL[k] (nearer the pelvis) and BONE_DISTAL[k].
# The reference computes vector = joint[proximal] - joint[distal]; the sign matters for checkpoint parity.
BONE_PROXIMAL: tuple[int, ...] = (0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15)
BONE_DISTAL: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16)
NUM_BONES = len(BONE_DISTAL)  # 16; the extractor appends a 17th "mean" token

# Limb Fuser: 17 fixed index groups. They read as bone ids, but the reference applies them to the raw input
# channels (x, y, confidence) of the joints with those indices; kept as is for checkpoint parity.
LIMB_GROUPS: tuple[tuple[int, ...], ...] = (
    (0, 1, 2), (3, 4, 5), (6, 7), (8, 9), (10, 11, 12), (13, 14, 15),
    (6, 7, 1, 2), (6, 7, 4, 5), (6, 7, 11, 12), (6, 7, 14, 15), (6, 7, 9),
    (14, 15, 11, 12), (1, 2, 4, 5), (14, 15, 4, 5), (11, 12, 4, 5), (10, 0), (13, 3),
)

# Spatial graph of the graph mixer: neighbours of each joint (no self loops).
JOINT_NEIGHBOURS: tuple[tuple[int, ...], ...] = (
    (1, 7, 4), (2, 0), (3, 1), (2,), (5, 0), (6, 4), (5,), (0, 8), (7, 9, 11, 14), (8, 10), (9,),
    (12, 8), (13, 11), (12,), (15, 8), (16, 14), (15,),
)

# Horizontal flip: x -> -x and these joints swap places.
FLIP_LEFT: tuple[int, ...] = (4, 5, 6, 11, 12, 13)
FLIP_RIGHT: tuple[int, ...] = (1, 2, 3, 14, 15, 16)


def _flip_permutation() -> tuple[int, ...]:
    perm = list(range(NUM_JOINTS))
    for left, right in zip(FLIP_LEFT, FLIP_RIGHT):
        perm[left], perm[right] = right, left
    return tuple(perm)


FLIP_PERMUTATION: tuple[int, ...] = _flip_permutation()

LOWER_BODY: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
UPPER_BODY: tuple[int, ...] = (7, 8, 9, 10, 11, 12, 13, 14, 15, 16)

# Edges to draw (child, parent), for pictures.
DRAW_EDGES: tuple[tuple[int, int], ...] = tuple((j, p) for j, p in enumerate(PARENTS) if p >= 0)
