"""Schemas of the state file and configs (RelaxNG), generated from the class declarations."""
