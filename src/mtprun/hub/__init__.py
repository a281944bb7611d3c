"""Model names from the Hugging Face Hub: ``owner/name[:quant]`` -> a plan -> local files.

Three steps, each usable on its own:

* :func:`parse_spec` checks the name the user typed (llama.cpp's ``-hf`` syntax).
* :func:`resolve` lists the repository (or, offline, the local cache) and decides which files to
  fetch: the model (every part of a split model), its MTP sidecar, optionally its ``mmproj`` and
  files named by ``--include``. The decision itself is :func:`plan_from_listing`, a pure function
  over ``(path, size)`` pairs.
* :func:`download` fetches a plan's files into the standard Hugging Face cache (or a
  ``local_dir``), resumably, and returns local paths plus what the model's GGUF header says.

The package never prints and knows nothing of terminals or of the engine. Its modules:

* ``spec``      the name the user typed; what remote file names say (quant, split part, sidecar)
* ``plan``      the pure planner: listing -> :class:`Plan` (which files, and why)
* ``settings``  :class:`HubSettings`, read from the environment when used
* ``cache``     what is on disk: cache snapshots and refs, ``local_dir``, :class:`LocalModel`
* ``client``    the I/O around the planner: :func:`resolve`, :func:`download`, :func:`fetch`
* ``transfer``  the only module that imports ``huggingface_hub``; the resumable byte transfer
* ``errors``    huggingface_hub and network errors as one-line :class:`~mtprun.errors.HubError`
* ``ranges``    parts of a remote GGUF by HTTP Range (``mtprun graft --mtp-from -hf``)
"""

from __future__ import annotations

from .cache import LocalModel
from .client import ProgressFn, download, fetch, resolve
from .plan import DEFAULT_TAGS, Plan, PlannedFile, RemoteFile, plan_from_listing
from .settings import DEFAULT_ENDPOINT, HubSettings
from .spec import HfSpec, parse_spec, quant_bits, quant_label, unsafe_path_reason

__all__ = [
    "HfSpec",
    "RemoteFile",
    "PlannedFile",
    "Plan",
    "LocalModel",
    "HubSettings",
    "ProgressFn",
    "DEFAULT_ENDPOINT",
    "DEFAULT_TAGS",
    "parse_spec",
    "plan_from_listing",
    "resolve",
    "download",
    "fetch",
    "unsafe_path_reason",
    "quant_label",
    "quant_bits",
]
