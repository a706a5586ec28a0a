"""Two-stage GCL training for any timm backbone: ``gcl-zoo train``, or ``python -m gcl_zoo_train`` (torchrun-ready).

Installed as ``gcl_zoo_train`` (the repository's ``train/``); its modules import one another relatively, so a
source checkout also runs it as ``python -m train``.
"""
