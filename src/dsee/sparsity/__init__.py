"""The sparse final model (paper §3.2): unstructured masks, head and FFN-neuron removal, importance
scores, FLOPs, and saving and loading models whose shapes changed (export, compact storage)."""
