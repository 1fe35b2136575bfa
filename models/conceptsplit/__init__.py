"""ConceptSplit as plain torch: token-wise value adapters (ToVA) on UNets and Flux and their training, per-word
attention maps, and LODA (latent optimisation on the concepts' attention maps, attention fixing guidance)."""
