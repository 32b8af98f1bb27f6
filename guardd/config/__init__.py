"""The configuration: frozen typed model, the YAML validator, and its printed form."""
