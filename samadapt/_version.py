"""samadapt's version: a leaf module, so that writers of metadata need not import the package root."""

__version__ = "0.1.0"
