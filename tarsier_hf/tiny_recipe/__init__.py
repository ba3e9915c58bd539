"""The tiny Tarsier recipe end to end on a CPU (`python -m tarsier_hf.tiny_recipe`) and its fast sweeps."""
