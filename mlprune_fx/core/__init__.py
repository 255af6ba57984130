"""The core every layer builds on: config, errors, the learnable mask, the mask functions the
prepared graph calls, the pruning-state records kept in `gm.meta`, the LEAP regulariser, the
kept-weight counter and the sparsity report. It imports nothing from the layers above."""
