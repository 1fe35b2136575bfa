"""ConceptSplit as plain torch: token-wise value adapters (ToVA), their patch on a UNet's cross-attention, and their
training."""
