"""Segmentation: the nnU-Net v2 backend and DeltaRad's multi-task longitudinal network."""
