"""The tokenizer's exception type."""


class TokenizerError(ValueError):
    """The GGUF metadata does not describe a tokenizer we can build, or a token id is out of range."""
