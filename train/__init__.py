"""Two-stage GCL training for any timm backbone: ``gcl-zoo train`` / ``python -m train`` (torchrun-ready)."""
