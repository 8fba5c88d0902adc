"""A researcher's own components, in their own package: dimat has never seen this code.

`models.ResidualMLP` (a model), `data.spirals` (a dataset loader), `algorithms.TrimmedMean` (an algorithm).
"""
