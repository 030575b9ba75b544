"""Bundles for hospital workstations: manifest, verification, torch-free inference, slide tiling."""
