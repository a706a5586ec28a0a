"""The gcl-zoo inference server (FastAPI + uvicorn), installed as ``gcl_zoo_serve``: ``gcl-zoo serve --help``, or
``create_app(settings)``."""
from gcl_zoo import __version__

__all__ = ["__version__"]
