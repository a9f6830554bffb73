"""The front of the analysis: tables that present sweep results (the CLIs and plots still live in analysis/)."""

from .appendix_c import APPENDIX_KINDS, classification_table, masked_table, write_appendix_tables

__all__ = ["APPENDIX_KINDS", "classification_table", "masked_table", "write_appendix_tables"]
