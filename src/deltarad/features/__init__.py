"""Features: regions (tumour + peritumoral rings), handcrafted (pyradiomics) and deltas."""
