"""The gcl-zoo inference server (FastAPI + uvicorn): ``gcl-zoo serve --help``, or ``create_app(settings)``."""
from gcl_zoo import __version__

__all__ = ["__version__"]
