"""Reference token ids from the Python `tokenizers` package (the binding of the crate onnxq uses).

  tokenizer_ids.py TEXT_FILE TOKENIZER.json...   -> JSON {tokenizer path: {"ids": [...], "tokens": [...]}}

The text is read as the Rust side reads it (UTF-8, CRLF made LF) and encoded with the
post-processor's special tokens, as `Tokenizer::encode` does.
"""
import json
import sys

from tokenizers import Tokenizer

text = open(sys.argv[1], encoding="utf-8", newline="").read().replace("\r\n", "\n")
out = {}
for path in sys.argv[2:]:
    enc = Tokenizer.from_file(path).encode(text, add_special_tokens=True)
    out[path] = {"ids": enc.ids, "tokens": enc.tokens}
print(json.dumps(out))
