"""Data: a corpus of documents, a tokenizer, and the Lightning DataModule that packs them into batches."""

from workbench.data.corpus import Corpus, build_corpus, corpus_key
from workbench.data.datamodule import LMDataModule
from workbench.data.tokenizer import BPETokenizer, ByteTokenizer, Tokenizer, build_tokenizer, load_tokenizer

__all__ = [
    "BPETokenizer",
    "ByteTokenizer",
    "Corpus",
    "LMDataModule",
    "Tokenizer",
    "build_corpus",
    "build_tokenizer",
    "corpus_key",
    "load_tokenizer",
]
