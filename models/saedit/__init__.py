"""SAEdit as plain torch: the sparse autoencoder, its training, edit directions, the schedule and the edit."""
