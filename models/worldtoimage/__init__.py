"""World-To-Image (arXiv 2510.04201) as plain Python over callables: keywords, a local image library, web image
sources behind the guarded fetcher, the score formulas, and the agent loop. Nothing here imports ComfyUI."""
