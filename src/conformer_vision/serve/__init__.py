"""``conformer serve``: an HTTP inference service with dynamic batching, metrics and a web page.

* ``model.py``: the served model (``open_served_model``): a ``runtime.Predictor`` over a checkpoint,
  an ONNX export or a hub-layout folder, with ``predict``'s decoding, preprocessing and probabilities,
  and Grad-CAM overlays from ``visualize``;
* ``batching.py``: the model thread that runs concurrent requests' images as batches;
* ``app.py``: the FastAPI application (endpoints, limits, errors, Prometheus metrics);
* ``server.py``: ``serve()``, which checks the options, loads the model, listens and drains on SIGTERM;
* ``page.html``: the web page served at ``/`` (plain HTML and JavaScript, nothing fetched from elsewhere).

See docs/serving.md.
"""

from .app import ServeSettings, ServeState, create_app
from .model import ServedModel, open_served_model
from .server import serve

__all__ = ["ServeSettings", "ServeState", "ServedModel", "create_app", "open_served_model", "serve"]
