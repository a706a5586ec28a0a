"""Model folders in timm's Hugging Face layout: save, validate, export a training run, push to the Hub.

A folder holds ``model.safetensors`` + ``config.json`` (what timm reads), and once exported also the ONNX graph
(``model.onnx``, and ``model.int8.onnx`` when calibration images were given), the training recipe (``train_hparams.yaml``), the evaluation (``eval.json``) and a model card
(``README.md``). It loads with ``timm.create_model("local-dir:<folder>", pretrained=True)`` after ``import gcl_zoo``;
pushed to the Hub, the same files load with ``timm.create_model("hf-hub:<org>/<name>", pretrained=True)``.

The jobs live in ``folders`` (save, validate), ``export`` (runs and shipped checkpoints to Hub-ready folders, model
cards) and ``push`` (upload); this module is their public face. The file names of a folder are
``gcl_zoo.folders``' (``WEIGHTS_NAME``, ``CONFIG_NAME``, ...).
"""
from .export import Int8Calibration, export_embedded, export_run, write_shipped_cards
from .folders import InvalidModelFolder, save_model_folder, validate_folder
from .push import push_folder

__all__ = [
    "save_model_folder", "validate_folder", "Int8Calibration", "export_run", "export_embedded", "write_shipped_cards",
    "push_folder",
    "InvalidModelFolder",
]
