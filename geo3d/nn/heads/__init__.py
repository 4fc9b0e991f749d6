"""Task heads that sit on any backbone's features (3D detection)."""

from geo3d.nn.heads.detection import (
    DetectionHead,
    angle_to_class,
    canonical_fps,
    class_to_angle,
    decode_boxes,
    decode_detections,
    detection_loss,
    encode_boxes,
)

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
