"""Recognition over cuts: batch decoding, scoring, pseudo-labels by voting."""
