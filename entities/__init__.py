"""The pure core: wire events, supernova records, the feature spec, incremental features.

Imports nothing from Kafka, faust, LightGBM or the filesystem: replay and the
streaming worker call these same functions.
"""
