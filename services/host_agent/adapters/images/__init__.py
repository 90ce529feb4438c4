"""Custom images: Dockerfile builds in build VMs, OCI imports, a layer cache."""
from .build import Base, BuildError, BuildResult, ImageBuilder
from .build_vm import BuildVmConfig
from .host_glue import InMemoryRecorder, bases_for, remover
from .importer import import_archive
from .store import ImageStore, image_ref, layer_ref

__all__ = ["Base", "BuildError", "BuildResult", "BuildVmConfig", "ImageBuilder", "ImageStore",
           "InMemoryRecorder", "bases_for", "image_ref", "import_archive", "layer_ref",
           "remover"]
