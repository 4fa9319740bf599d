"""Outcome models: leakage-proof harmonisation, response and survival models, validation and
statistics.

Everything learned from data (imputation, ComBat, filters, selection, model) is fitted inside the
training part of each split; see :mod:`deltarad.model.validation`.
"""
