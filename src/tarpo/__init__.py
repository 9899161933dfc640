"""TARPO reproduction pipeline: token-wise latent/explicit reasoning via action-routing policy optimisation."""

__version__ = "0.1.0"
