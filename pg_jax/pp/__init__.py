"""Preprocessing: the op registry, the op-string builder, op modules and the tokenizer."""
