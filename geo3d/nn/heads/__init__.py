"""Task heads that sit on any backbone's features (3D detection)."""

from geo3d.nn.heads.box_coding import angle_to_class, class_to_angle, decode_boxes, encode_boxes
from geo3d.nn.heads.detection import DetectionHead, decode_detections
from geo3d.nn.heads.detection_loss import detection_loss
from geo3d.nn.heads.point_grouping import canonical_fps

__all__ = [
    "DetectionHead",
    "angle_to_class",
    "canonical_fps",
    "class_to_angle",
    "decode_boxes",
    "decode_detections",
    "detection_loss",
    "encode_boxes",
]
