"""The explainers (Captum-shaped) and the registered explainer bundle."""
