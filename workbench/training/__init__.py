"""The training recipe (LightningModule), precision policies and cost/budget callbacks."""
