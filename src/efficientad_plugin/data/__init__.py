"""Example data helpers for tests and quickstarts."""

from efficientad_plugin.data.synthetic import generate_mvtec_dataset

__all__ = ["generate_mvtec_dataset"]
