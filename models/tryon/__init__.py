"""DiT-VTON as plain numpy/torch: pose, agnostic masks, pose-image stitching and exact paste-back."""
