"""Deep Compression for the SqueezeNet family: pruning, weight sharing, Huffman-coded storage."""
