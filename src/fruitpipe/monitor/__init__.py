"""Watching runs over time: `fruitpipe drift` (a current run against a reference run, in the reference's
PCA space). Above `recognise` (it reads a trained model's bundle) and below `benchmark`."""
