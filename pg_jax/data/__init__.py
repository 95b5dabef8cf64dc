"""Data sources (DocVQA readers, the prepared cache, the synthetic set) and the input pipeline."""
