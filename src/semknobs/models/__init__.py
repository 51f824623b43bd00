"""The networks: AttGAN, concept network, regressor."""
