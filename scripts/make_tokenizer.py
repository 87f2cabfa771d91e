"""Build the CLIP `tokenizer.json` (for the Rust `tokenizers` crate) offline.

The BPE vocabulary is the one OpenAI released with CLIP
(`bpe_simple_vocab_16e6.txt.gz`), as shipped inside the PyPI package
`open_clip_torch`. The vocabulary and merge list are derived exactly as
`open_clip/tokenizer.py::SimpleTokenizer.__init__` does, then handed to
`transformers.CLIPTokenizer`, which writes the `tokenizers` JSON.

Usage: python scripts/make_tokenizer.py assets/tokenizer.json
"""
import gzip
import sys

import open_clip
from open_clip.tokenizer import bytes_to_unicode, default_bpe
from transformers import CLIPTokenizer


def main(out_path: str) -> None:
    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    # open_clip/tokenizer.py: merges = merges[1:49152-256-2+1]
    merges = merges[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab.extend("".join(m) for m in merges)
    vocab.extend(["<|startoftext|>", "<|endoftext|>"])
    encoder = {token: index for index, token in enumerate(vocab)}
    assert len(encoder) == 49408

    # transformers >= 5 takes the vocabulary and merges in memory.
    tokenizer = CLIPTokenizer(vocab=encoder, merges=merges)
    tokenizer.backend_tokenizer.save(out_path)

    ids = tokenizer("a photo of a cat.")["input_ids"]
    expected = [49406, 320, 1125, 539, 320, 2368, 269, 49407]
    assert ids == expected, ids
    assert open_clip.tokenize(["a photo of a cat."])[0][: len(expected)].tolist() == expected
    print(f"wrote {out_path} (open_clip_torch {open_clip.__version__})")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "assets/tokenizer.json")
