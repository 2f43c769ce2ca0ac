"""The pipeline spec: what a YAML file may say (models, with the predict and output blocks and their
base; loader, broken-spec placeholder, signature check and type contract, trigger conf rule). Imported by everything;
imports only `mlbatch.errors`."""
