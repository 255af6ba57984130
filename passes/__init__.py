"""Graph passes: capture, analysis, mask insertion and the convert passes."""
