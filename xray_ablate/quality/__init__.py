"""Image quality: cached BRISQUE scores, the 1.5xIQR outlier filter and the quality report."""
