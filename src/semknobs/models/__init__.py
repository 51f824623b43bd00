"""The networks: AttGAN, regressor."""
