"""One module per secret store, each imported only when a reference names its scheme."""
