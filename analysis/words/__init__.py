"""Word-level fusion across tokenizers (DESIGN.md section 7): segments, their alignment, `WordPair`."""

from .pair import WordHeldout, WordOptimum, WordPair, word_frame, word_pairs
from .segments import Segments, WordData, store_segments, word_fusion_refusal

__all__ = ["WordPair", "WordOptimum", "WordHeldout", "word_frame", "word_pairs", "Segments", "WordData",
           "store_segments", "word_fusion_refusal"]
