"""Safe model rollouts: canary and shadow routing between versions, its policy store, the shadow
queue, the automatic abort and the report from the prediction log."""
